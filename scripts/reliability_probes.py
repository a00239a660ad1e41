#!/usr/bin/env python3
"""Runs the reliability probes of docs/reliability.md against an xtask binary and prints a
markdown table (probe, outcome). Run it once with an old binary and once with a new one to
get the before/after columns:

    cargo build --release -p xtask
    python3 scripts/reliability_probes.py target/release/xtask > /tmp/after.md

Needs the MiniLM model where `cargo xtask demo` finds it. Each probe works in its own
temporary directory on a tiny GLUE copy (8 train / 4 dev rows), so a probe that trains takes
a few seconds. Outcome classes: PANIC (exit 101 with "panicked"), ERROR (a clean error: its
first line is shown), OK (exit 0; a note says what the probe then checks).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

XTASK = Path(sys.argv[1]).resolve()
ROOT = Path(__file__).resolve().parent.parent
LONG = " ".join(["word"] * 700)


def glue(dir: Path) -> Path:
    g = dir / "glue"
    rows_rte = [("A man walks.", "A person walks.", "entailment"), ("It rains.", "It is sunny.", "not_entailment")] * 4
    (g / "RTE").mkdir(parents=True)
    for name, n in [("train.tsv", 8), ("dev.tsv", 4)]:
        text = "index\tsentence1\tsentence2\tlabel\n" + "".join(f"{i}\t{a}\t{b}\t{l}\n" for i, (a, b, l) in enumerate(rows_rte[:n]))
        (g / "RTE" / name).write_text(text)
    (g / "STS-B").mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for name, n in [("train.tsv", 8), ("dev.tsv", 4)]:
        rows = "".join(f"{i}\tg\tf\ty\to\ts\ts\tA man walks.\tA person walks.\t{i % 5}.0\n" for i in range(n))
        (g / "STS-B" / name).write_text(head + rows)
    return g


def experiment(dir: Path, g: Path, task="rte", train="", tuning="", name="e.toml") -> Path:
    keys = {"epochs": "1", "batch_size": "4", "eval_batch_size": "4", "max_length": "32", "log_every": "1"}
    for line in train.splitlines():
        k, v = line.split("=", 1)
        keys[k.strip()] = v.strip()
    body = "".join(f"{k} = {v}\n" for k, v in keys.items())
    p = dir / name
    p.write_text(f'[experiment]\nname = "probe"\ntask = "{task}"\nglue_dir = "{g}"\n[train]\n{body}{tuning}')
    return p


ENV = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


def run(args, cwd, timeout=300):
    t = time.time()
    p = subprocess.run([str(XTASK), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr, time.time() - t


def classify(rc, out, err):
    if rc == 101 or "panicked" in err:
        line = next((l for l in err.splitlines() if "panicked" in l or "index" in l), err.strip()[:120])
        nxt = err.split("panicked", 1)[-1].splitlines()
        msg = (nxt[1] if len(nxt) > 1 else line).strip()
        return f"PANIC: {msg[:110]}"
    if rc != 0:
        lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("  ") and "INFO" not in l and "WARN" not in l]
        first = lines[0] if lines else err.strip()[:120]
        more = [l.strip() for l in err.strip().splitlines() if l.startswith("Caused by") or l.startswith("    ")][:2]
        return "ERROR: " + " ".join([first.removeprefix("Error: ")] + more)[:200]
    return "OK"


PROBES = []


def probe(name):
    def wrap(f):
        PROBES.append((name, f))
        return f
    return wrap


@probe("`--set train.dropout=1.5`")
def _(d, g):
    return classify(*run(["run", experiment(d, g), "--out", d / "r", "--set", "train.dropout=1.5"], d)[:3])


@probe("LoRA `dropout = 2.0`")
def _(d, g):
    e = experiment(d, g, tuning='[[train.tuning]]\nkind = "lora"\ndropout = 2.0\n')
    return classify(*run(["run", e, "--out", d / "r"], d)[:3])


for ml in [513, 100000, 0, 1]:
    @probe(f"`max_length = {ml}`, one 700-word text")
    def _(d, g, ml=ml):
        (g / "RTE" / "train.tsv").write_text(f"index\tsentence1\tsentence2\tlabel\n0\t{LONG}\tshort\tentailment\n1\ta\tb\tnot_entailment\n")
        return classify(*run(["run", experiment(d, g), "--out", d / "r", "--set", f"train.max_length={ml}"], d)[:3])


@probe("`lens mixing --max-length 513`, one 700-word text")
def _(d, g):
    (d / "t.json").write_text(json.dumps([LONG]))
    return classify(*run(["lens", "mixing", "--input", d / "t.json", "--out", d / "m", "--max-length", "513"], d)[:3])


@probe("`lens mixing` on `[]`")
def _(d, g):
    (d / "t.json").write_text("[]")
    return classify(*run(["lens", "mixing", "--input", d / "t.json", "--out", d / "m"], d)[:3])


@probe("`parity` reference with token id 999999")
def _(d, g):
    import struct
    ids = [101, 999999, 102]
    header = {
        "input_ids": {"dtype": "I64", "shape": [1, 3], "data_offsets": [0, 24]},
        "attention_mask": {"dtype": "I64", "shape": [1, 3], "data_offsets": [24, 48]},
        "token_type_ids": {"dtype": "I64", "shape": [1, 3], "data_offsets": [48, 72]},
    }
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    body = struct.pack("<3q", *ids) + struct.pack("<3q", 1, 1, 1) + struct.pack("<3q", 0, 0, 0)
    (d / "ref.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + body)
    model = os.environ.get("KILN_MODEL_DIR") or str(Path.home() / ".cache/kiln/models/all-MiniLM-L6-v2")
    return classify(*run(["parity", "--model", model, "--reference", d / "ref.safetensors"], d)[:3])


@probe("two `run`s on one `--out` at once")
def _(d, g):
    e = experiment(d, g, train="epochs = 3")
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([str(XTASK), "run", str(e), "--out", str(d / "r")], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
        time.sleep(0.5)
    res = []
    for p in procs:
        out, err = p.communicate()
        res.append((p.returncode, out, err))
    outcomes = [classify(*r) for r in res]
    m = d / "r" / "metrics.jsonl"
    lines = [json.loads(l)["step"] for l in m.read_text().splitlines() if '"train"' in l] if m.exists() else []
    mixed = lines != sorted(set(lines))
    return f"first: {outcomes[0]} / second: {outcomes[1]}; metrics.jsonl train steps {lines}{' (interleaved)' if mixed else ''}"


def rerun_finished(d, g, *flags):
    """A finished run with an analysis, then `run` again with `flags`."""
    e = experiment(d, g)
    run(["run", e, "--out", d / "r"], d)
    (d / "r" / "analysis").mkdir(exist_ok=True)
    (d / "r" / "analysis" / "analysis.json").write_text("{}")
    out = classify(*run(["run", e, "--out", d / "r", *flags], d)[:3])
    return f"{out}; old analysis/ {'kept' if (d / 'r' / 'analysis').exists() else 'removed'}"


@probe("second `run` into a finished run (no `--resume`), after `lens analyse` wrote analysis/")
def _(d, g):
    return rerun_finished(d, g)


@probe("`--overwrite` of that run")
def _(d, g):
    return rerun_finished(d, g, "--overwrite")


@probe("crash between the checkpoint swap's renames, then `--resume`")
def _(d, g):
    e = experiment(d, g, train="epochs = 2")
    run(["run", e, "--out", d / "r"], d)
    # The state a kill between the two renames leaves: no last/, the complete one aside.
    (d / "r" / "checkpoints" / "last").rename(d / "r" / "checkpoints" / ".last.old")
    rc, out, err, _ = run(["run", e, "--out", d / "r", "--resume"], d)
    if rc != 0:
        return classify(rc, out, err)
    res = json.loads((d / "r" / "results.json").read_text())
    return f"{classify(rc, out, err)}; resumed: {res.get('resumed')} (the run was complete: resuming trains nothing)"


@probe("disk full at the second checkpoint (run directory on a 450 MB tmpfs; needs root)")
def _(d, g):
    mnt = d / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450M", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        return "(skipped: cannot mount a tmpfs)"
    try:
        (g / "RTE" / "train.tsv").write_text((g / "RTE" / "train.tsv").read_text())
        e = experiment(d, g, train="eval_every = 1")
        rc, out, err, _ = run(["run", e, "--out", mnt / "r"], d)
        left = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.name)
        state = mnt / "r" / "checkpoints" / "last" / "state.json"
        kept = json.loads(state.read_text())["global_step"] if state.exists() else None
        return f"{classify(rc, out, err)}; leftovers {left or 'none'}; checkpoints/last at step {kept}"
    finally:
        subprocess.run(["umount", str(mnt)])


@probe("`--resume` into an empty directory")
def _(d, g):
    return classify(*run(["run", experiment(d, g), "--out", d / "r", "--resume"], d)[:3])


@probe("`--resume` with a different `train.lr`")
def _(d, g):
    e = experiment(d, g)
    run(["run", e, "--out", d / "r"], d)
    return classify(*run(["run", e, "--out", d / "r", "--resume", "--set", "train.lr=1e-3"], d)[:3])


for key, value in [("lr", "-1e-5"), ("batch_size", "0"), ("grad_accum", "0"), ("eval_batch_size", "0"), ("epochs", "1.5"),
                   ("warmup_ratio", "1.5"), ("adamw.beta1", "1.0"), ("adamw.eps", "0"), ("adamw.max_grad_norm", "-1")]:
    @probe(f"`train.{key} = {value}`")
    def _(d, g, key=key, value=value):
        return classify(*run(["run", experiment(d, g), "--out", d / "r", "--set", f"train.{key}={value}"], d)[:3])


for label, tuning in [("LoRA `alpha = -1`", 'kind = "lora"\nalpha = -1.0'), ("LoRA `r = 1000`", 'kind = "lora"\nr = 1000'),
                      ("Houlsby `reduction = 1000`", 'kind = "houlsby"\nreduction = 1000')]:
    @probe(label)
    def _(d, g, tuning=tuning):
        e = experiment(d, g, tuning=f"[[train.tuning]]\n{tuning}\n")
        return classify(*run(["run", e, "--out", d / "r"], d)[:3])


@probe("STS-B score 7.5 in train.tsv")
def _(d, g):
    p = g / "STS-B" / "train.tsv"
    p.write_text(p.read_text().replace("\t1.0\n", "\t7.5\n"))
    return classify(*run(["run", experiment(d, g, task="stsb"), "--out", d / "r"], d)[:3])


@probe("STS-B score NaN in train.tsv")
def _(d, g):
    p = g / "STS-B" / "train.tsv"
    p.write_text(p.read_text().replace("\t1.0\n", "\tNaN\n"))
    return classify(*run(["run", experiment(d, g, task="stsb"), "--out", d / "r"], d)[:3])


@probe("empty RTE train.tsv (header only)")
def _(d, g):
    (g / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    return classify(*run(["run", experiment(d, g), "--out", d / "r"], d)[:3])


@probe("`report` of a missing run")
def _(d, g):
    return classify(*run(["report", d / "nope"], d)[:3])


@probe("`--set train.lr=fast`")
def _(d, g):
    return classify(*run(["run", experiment(d, g), "--out", d / "r", "--set", "train.lr=fast"], d)[:3])


def main():
    only = sys.argv[2:]
    print(f"binary: {XTASK}\n\n| probe | outcome |\n|---|---|")
    for name, f in PROBES:
        if only and not any(o in name for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            try:
                outcome = f(d, glue(d))
            except Exception as e:  # a probe that cannot even be set up
                outcome = f"(probe failed: {type(e).__name__}: {e})"
        print(f"| {name} | {outcome.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
