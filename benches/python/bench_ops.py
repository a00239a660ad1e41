#!/usr/bin/env python3
"""PyTorch eager counterpart of `cargo xtask bench ops` and of its GEMM table.

Prints one line per row, `name<TAB>ms`, with the same row names as the Rust bench so the two
can be joined: one MiniLM layer's operations at [batch, seq] (forward, then training rows
with autograd), and GFLOP/s of every GEMM shape a MiniLM forward and backward runs.
Timing: one warm-up, then the median of --iters calls.

  python bench_ops.py --batch 32 --seq 128 --threads 2
"""

import argparse
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b, s, h, heads, ff = a.batch, a.seq, 384, 12, 1536
    x = torch.randn(b, s, h)
    inner = torch.randn(b, s, ff)
    q = torch.randn(b, heads, s, h // heads)
    scores = torch.randn(b, heads, s, s)
    lin_h = torch.nn.Linear(h, h)
    lin_ff = torch.nn.Linear(h, ff)
    ln = torch.nn.LayerNorm(h, eps=1e-12)

    def t(f):
        f()
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    rows = []
    with torch.inference_mode():
        rows += [
            ("linear h->h (x4/layer)", t(lambda: lin_h(x))),
            ("linear h->4h (x2/layer)", t(lambda: lin_ff(x))),
            ("gelu_exact [b,s,4h]", t(lambda: F.gelu(inner))),
            ("erf [b,s,4h] (burn op)", t(lambda: torch.erf(inner))),
            ("exp [b,s,4h] (burn op)", t(lambda: torch.exp(inner))),
            ("layer_norm [b,s,h] (x2)", t(lambda: ln(x))),
            ("softmax [b,H,s,s] (burn op)", t(lambda: torch.softmax(scores, -1))),
            ("attention fused + head merge",
             t(lambda: F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(b, s, h))),
            ("add [b,s,h]", t(lambda: x + x)),
        ]

    def gelu_train():
        xi = inner.clone().requires_grad_()
        F.gelu(xi).sum().backward()

    def attn_train():
        qi = q.clone().requires_grad_()
        F.scaled_dot_product_attention(qi, qi, qi, dropout_p=0.1).sum().backward()

    def ln_train():
        xi = x.clone().requires_grad_()
        ln(xi).sum().backward()

    def lin_train():
        xi = x.clone().requires_grad_()
        lin_ff(xi).sum().backward()

    rows += [
        ("train: gelu_exact fwd+bwd [b,s,4h]", t(gelu_train)),
        ("train: attention fwd+bwd, dropout 0.1", t(attn_train)),
        ("train: dropout 0.1 [b,s,h]", t(lambda: F.dropout(x, 0.1, training=True))),
        ("train: layer_norm fwd+bwd [b,s,h]", t(ln_train)),
        ("train: linear h->4h fwd+bwd", t(lin_train)),
    ]
    for name, secs in rows:
        print(f"{name}\t{secs * 1e3:.3f}")

    # GEMMs of MiniLM: (m, k, n) of y = x·W and both backward forms.
    tok = b * s
    shapes = []
    for din, dout in [(h, h), (h, ff), (ff, h)]:
        shapes += [(f"fwd {tok}x{din}·{din}x{dout}", tok, din, dout),
                   (f"dX {tok}x{dout}·{dout}x{din}", tok, dout, din),
                   (f"dW {din}x{tok}·{tok}x{dout}", din, tok, dout)]
    with torch.inference_mode():
        for name, m, k, n in shapes:
            l, r = torch.randn(m, k), torch.randn(k, n)
            secs = t(lambda: torch.mm(l, r))
            print(f"gemm {name}\t{secs * 1e3:.4f}\t{2 * m * k * n / secs / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
