#!/usr/bin/env python3
"""PyTorch + transformers run of kiln's GLUE fine-tuning recipe, for comparison.

This is the baseline that `experiments/<task>.toml` is checked against (issue 3): the same
checkpoint, data files, recipe and seed, written the way a transformers user would write it
(AutoModelForSequenceClassification, torch AdamW with no decay on biases/LayerNorm weights,
linear warmup then linear decay, global-norm clipping, dynamic padding, eval at each epoch
end). The metrics are computed here with numpy, independently of kiln-data's Rust code.

Not used by CI; needs `pip install torch transformers numpy`.

    python3 scripts/hf_glue_reference.py --task cola \
        --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/glue \
        --out runs/pytorch/cola

Writes `<out>/results.json` with the same fields as kiln's (`final_metrics`, `best`,
`wall_time_s`, `train_seq_per_s`) and `<out>/metrics.jsonl` with the per-epoch evaluations.
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TASKS = {
    # name: (directory, has_header, text columns, label column, label map or None=regression, primary)
    "cola": ("CoLA", False, (3,), 1, {"0": 0, "1": 1}, "mcc"),
    "sst2": ("SST-2", True, (0,), 1, {"0": 0, "1": 1}, "accuracy"),
    "mrpc": ("MRPC", True, (3, 4), 0, {"0": 0, "1": 1}, "f1"),
    "rte": ("RTE", True, (1, 2), 3, {"entailment": 0, "not_entailment": 1}, "accuracy"),
    "stsb": ("STS-B", True, (7, 8), 9, None, "pearson"),
}


def read_tsv(path, has_header, text_cols, label_col, labels):
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if has_header:
        lines = lines[1:]
    rows = []
    for number, line in enumerate(lines, start=2 if has_header else 1):
        fields = line.split("\t")
        need = max(max(text_cols), label_col) + 1
        if len(fields) < need:
            raise ValueError(f"{path}:{number}: {len(fields)} fields, need {need}")
        texts = tuple(fields[c] for c in text_cols)
        raw = fields[label_col]
        label = labels[raw] if labels is not None else float(raw)
        rows.append((texts, label))
    return rows


def mcc(pred, gold):
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def f1(pred, gold):
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def average_ranks(x):
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def pearson(a, b):
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def metrics(task, outputs, gold):
    if TASKS[task][4] is None:
        pred = outputs[:, 0]
        return {"pearson": pearson(pred, gold), "spearman": pearson(average_ranks(pred), average_ranks(gold))}
    pred = outputs.argmax(axis=1)
    gold = gold.astype(np.int64)
    values = {"accuracy": float(np.mean(pred == gold))}
    if task == "cola":
        values["mcc"] = mcc(pred, gold)
    if task == "mrpc":
        values["f1"] = f1(pred, gold)
    return values


def batches(rows, tokenizer, batch_size, max_length, regression):
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [r[0] for r in chunk]
        if len(texts[0]) == 1:
            enc = tokenizer([t[0] for t in texts], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        else:
            enc = tokenizer(
                [t[0] for t in texts],
                [t[1] for t in texts],
                truncation="longest_first",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        dtype = torch.float32 if regression else torch.long
        yield enc, torch.tensor([r[1] for r in chunk], dtype=dtype)


def evaluate(task, model, tokenizer, rows, args, regression):
    model.eval()
    outs = []
    with torch.no_grad():
        for enc, _ in batches(rows, tokenizer, args.eval_batch_size, args.max_length, regression):
            outs.append(model(**enc).logits.float().numpy())
    model.train()
    return metrics(task, np.concatenate(outs), np.array([r[1] for r in rows]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="GLUE directory holding CoLA/, MRPC/, ...")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    directory, header, text_cols, label_col, labels, primary = TASKS[args.task]
    regression = labels is None
    train = read_tsv(os.path.join(args.data, directory, "train.tsv"), header, text_cols, label_col, labels)
    dev = read_tsv(os.path.join(args.data, directory, "dev.tsv"), header, text_cols, label_col, labels)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=1 if regression else len(labels)
    )
    model.train()

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(math.ceil(total * args.warmup_ratio))

    def schedule(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "metrics.jsonl"), "w")
    rng = random.Random(args.seed)
    best = None
    step = 0
    seen = 0
    train_time = 0.0
    started = time.time()
    for epoch in range(args.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        shuffled = [train[i] for i in order]
        t0 = time.time()
        for enc, target in batches(shuffled, tokenizer, args.batch_size, args.max_length, regression):
            loss = model(**enc, labels=target).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            seen += len(target)
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {loss.item():.4f}", flush=True)
        train_time += time.time() - t0
        values = evaluate(args.task, model, tokenizer, dev, args, regression)
        print(f"epoch {epoch} eval {values}", flush=True)
        log.write(json.dumps({"epoch": epoch, "kind": "eval", "step": step, "metrics": values}) + "\n")
        log.flush()
        if best is None or values[primary] > best[0]:
            best = (values[primary], step)
    results = {
        "task": args.task,
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "final_metrics": {"primary": primary, "values": values},
        "best": list(best),
        "steps": step,
        "wall_time_s": time.time() - started,
        "train_seq_per_s": seen / train_time,
    }
    tmp = os.path.join(args.out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(args.out, "results.json"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
