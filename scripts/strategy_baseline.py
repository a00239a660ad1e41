#!/usr/bin/env python3
"""Behaviour check for refactors of the tuning strategies (issue 15's acceptance): runs every
experiments/strategies-*.toml on 64 RTE training examples for one epoch with a fixed seed,
and prints, per strategy, the trainable-parameter count, the per-module trainable counts'
digest and the last logged training loss. Run it with the binary before and after a change
and diff the two outputs.

    scripts/strategy_baseline.py XTASK OUT_DIR > before.tsv
"""
import glob, hashlib, json, os, subprocess, sys

xtask, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
print("strategy\ttrainable\ttotal\tper_module_sha\tlast_loss\tsteps")
for toml in sorted(glob.glob("experiments/strategies-*.toml")):
    name = os.path.basename(toml)[len("strategies-"):-len(".toml")]
    run = os.path.join(out, name)
    cmd = [xtask, "run", toml, "--out", run, "--overwrite", "--seed", "42",
           "--set", "train.max_train_examples=64", "--set", "train.epochs=1",
           "--set", "train.log_every=1", "--set", "train.batch_size=16"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"{name}\tERROR\t{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
        continue
    tr = json.load(open(os.path.join(run, "trainable.json")))
    sha = hashlib.sha256(json.dumps(tr["per_module"]).encode()).hexdigest()[:12]
    losses = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    train = [m for m in losses if m.get("kind") == "train"]
    print(f"{name}\t{tr['trainable']}\t{tr['total']}\t{sha}\t{train[-1]['loss']:.10f}\t{train[-1]['step']}", flush=True)
