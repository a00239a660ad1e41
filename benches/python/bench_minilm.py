#!/usr/bin/env python3
"""PyTorch eager baseline for `cargo xtask bench minilm --baseline-python PATH`.

Runs the same workload as kiln's bench (kiln/xtask/src/bench_minilm.rs) on
transformers' BertForSequenceClassification and prints one JSON line in the same format:

  {"name": "minilm_forward" | "minilm_train_step", "device": "cpu", "backend": "pytorch",
   "batch": B, "seq": S, "seq_per_s": ..., "tokens_per_s": ..., "peak_rss_mb": ..., ...}

forward:    model.eval(), torch.inference_mode(), logits of random ids (all tokens real).
train_step: model.train() (dropout 0.1), cross-entropy, backward, clip_grad_norm_(1.0),
            AdamW(lr 2e-5, weight_decay 0.01) step, zero_grad.
Timing: one warm-up, then the median of --iters iterations (on CUDA each iteration ends with
torch.cuda.synchronize()). One process per workload, so peak RSS (ru_maxrss) belongs to that
workload alone.

--size bert-base: a random BERT-base-shaped model (12 × 768, FFN 3072). --device cuda runs on
the GPU in float32; PyTorch's default there keeps TF32 off for matmuls (--tf32 turns it on).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="HF model directory (random MiniLM-shaped weights when absent)")
    p.add_argument("--mode", choices=["forward", "train_step"], required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores for f32 matmuls (CUDA)")
    a = p.parse_args()

    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(a.seed)
    if a.model and a.size == "minilm":
        model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2, attn_implementation="sdpa")
    else:
        width, layers, ffn = (384, 6, 1536) if a.size == "minilm" else (768, 12, 3072)
        cfg = BertConfig(vocab_size=30522, hidden_size=width, num_hidden_layers=layers, num_attention_heads=12,
                         intermediate_size=ffn, max_position_embeddings=512, num_labels=2)
        model = BertForSequenceClassification(cfg)
    dev = torch.device(a.device)
    model.to(dev)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    ids = torch.randint(1000, 29000, (a.batch, a.seq), device=dev)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    labels = torch.randint(0, 2, (a.batch,), device=dev)

    if a.mode == "forward":
        model.eval()

        def run():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.sum().item()
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)

        def run():
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    run()
    sync()
    times = []
    for _ in range(max(1, a.iters)):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    secs = statistics.median(times)
    seq_per_s = a.batch / secs
    print(json.dumps({
        "name": a.size.replace("-", "_") + "_" + a.mode, "device": a.device, "backend": "pytorch" + ("-tf32" if a.tf32 else ""),
        "batch": a.batch, "seq": a.seq, "seq_per_s": seq_per_s, "tokens_per_s": seq_per_s * a.seq,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "weights": "pretrained" if a.model else "random",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
