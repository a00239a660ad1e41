#!/usr/bin/env python3
"""Writes a train-step reference (the minilm-train-step format of shared/reference/README.md)
for `cargo xtask train-parity`, plus the step-0 gradients of chosen parameters (`grad0.<HF
name>`), which train-parity uses for its per-element diagnostics.

    python3 scripts/train_step_reference.py --model DIR --sentences S.json --out REF.safetensors \
        [--pooler-std 0.02] [--seed 0] [--threads 2] [--after NAME ...]

BertForSequenceClassification, dropout 0, labels i % 2, one right-padded batch, 3 steps of
AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01 except biases and LayerNorm
weights, global clipping at 1.0). The pooler and classifier start from fresh N(0, std²)
weights (zero biases), stored as `init.*`; without --pooler-std they use transformers' own
initialisation (std = initializer_range).
"""

import argparse
import json

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification

DEFAULT_AFTER = [
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "bert.encoder.layer.5.output.dense.weight",
    "bert.encoder.layer.5.output.LayerNorm.bias",
    "bert.pooler.dense.weight",
    "classifier.weight",
    "classifier.bias",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--sentences", required=True, help="JSON list of strings or [a, b] pairs")
    p.add_argument("--out", required=True)
    p.add_argument("--pooler-std", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--after", nargs="*", default=DEFAULT_AFTER)
    p.add_argument("--grad0", nargs="*", default=["bert.pooler.dense.weight", "classifier.weight"])
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    texts = json.load(open(a.sentences))
    tok = AutoTokenizer.from_pretrained(a.model)
    pairs = [t for t in texts if isinstance(t, list)]
    enc = (
        tok([t[0] for t in texts], [t[1] for t in texts], padding=True, return_tensors="pt")
        if pairs
        else tok(texts, padding=True, return_tensors="pt")
    )
    model = BertForSequenceClassification.from_pretrained(
        a.model, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager"
    )
    if a.pooler_std is not None:
        with torch.no_grad():
            for lin in [model.bert.pooler.dense, model.classifier]:
                lin.weight.normal_(0.0, a.pooler_std)
                lin.bias.zero_()
    init = {
        "init.pooler.dense.weight": model.bert.pooler.dense.weight,
        "init.pooler.dense.bias": model.bert.pooler.dense.bias,
        "init.classifier.weight": model.classifier.weight,
        "init.classifier.bias": model.classifier.bias,
    }
    out = {k: v.detach().clone().contiguous() for k, v in init.items()}
    labels = torch.tensor([i % 2 for i in range(len(texts))])
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm.weight" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm.weight" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
    )
    model.train()
    params = dict(model.named_parameters())
    losses, norms = [], []
    for step in range(a.steps):
        loss = model(**enc, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        if step == 0:
            for name in a.grad0:
                out[f"grad0.{name}"] = params[name].grad.detach().clone().contiguous()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    for name in a.after:
        out[f"after.{name}"] = params[name].detach().clone().contiguous()
    out["input_ids"] = enc["input_ids"]
    out["token_type_ids"] = enc["token_type_ids"]
    out["attention_mask"] = enc["attention_mask"]
    out["labels"] = labels
    out["loss"] = torch.tensor(losses, dtype=torch.float32)
    out["grad_norm"] = torch.tensor(norms, dtype=torch.float32)
    save_file(out, a.out)
    print(json.dumps({"loss": losses, "grad_norm": norms, "torch": torch.__version__, "threads": a.threads}))


if __name__ == "__main__":
    main()
