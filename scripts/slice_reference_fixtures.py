#!/usr/bin/env python3
"""Writes the committed PyTorch reference fixtures (fixtures/reference/) as exact slices of
the full reference outputs in shared/reference/ (PyTorch 2.15 + transformers 5.23, float32,
eager attention; format in fixtures/reference/README.md).

kiln's tests compare against fixtures/reference/, so `cargo test --workspace` passes on a
machine without ../shared. A few examples are enough for a parity check, and the full files
are 11 MB: this keeps 2 of the 8 MiniLM sentences, 2 of the 4 pairs, 2 of the 3 GPT-2 rows
(the padded one included), and the leading 16 rows of each 2-D parameter after the three
training steps (the batch itself cannot shrink: it decides the gradients). Rows are cut to
the longest kept sequence; with right padding and per-row attention, the outputs of the kept
tokens do not depend on the dropped rows or padding, so a slice equals what PyTorch computes
on the smaller batch (to float32 rounding of a differently shaped GEMM).

What was kept is recorded in each file's metadata (`kiln.rows`, `kiln.seq`,
`kiln.after_rows`, `kiln.sliced_from`), and kiln-model's `reference_fixtures` test checks,
wherever shared/reference exists (CI), that every fixture tensor equals that slice of the
full file bit for bit. Regenerating the full files needs PyTorch (scripts/make_parity_reference.py,
scripts/train_step_reference.py); this script needs only Python's standard library.

Usage: python3 scripts/slice_reference_fixtures.py [SHARED_REFERENCE_DIR] [OUT_DIR]
"""
import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

SIZES = {"F32": 4, "I64": 8, "F64": 8, "I32": 4}

# Per file: rows kept on the batch axis (None: all), whether 2-D `after.*` tensors keep only
# their leading rows, and the JSON text files sliced alongside (same rows).
PLAN = {
    "minilm/reference.safetensors": {"rows": [3, 7], "texts": "minilm/sentences.json"},
    "minilm/reference_pairs.safetensors": {"rows": [0, 3], "texts": "minilm/pairs.json"},
    "gpt2-tiny/reference.safetensors": {"rows": [0, 2], "copy": ["gpt2-tiny/config.json", "gpt2-tiny/model.safetensors"]},
    "minilm-train-step/reference.safetensors": {"rows": None, "after_rows": 16, "copy": ["minilm-train-step/sentences.json"]},
}

BATCH_TENSORS = ("input_ids", "attention_mask", "token_type_ids", "hidden_states.", "attentions.", "sentence_embedding", "logits")


def seq_axes(name):
    """Axes of length S (the padded sequence) for a reference tensor."""
    if name.startswith("attentions."):
        return (2, 3)
    if name in ("input_ids", "attention_mask", "token_type_ids", "logits") or name.startswith("hidden_states."):
        return (1,)
    return ()


def read(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], body[start:end])
    return meta, tensors, hashlib.sha256(data).hexdigest()


def write(path, meta, tensors):
    header = {"__metadata__": meta}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def take(dtype, shape, raw, index_maps):
    """Keeps, on each axis, the source indices `index_maps[axis]` (row-major copy)."""
    size = SIZES[dtype]
    strides = [1] * len(shape)
    for a in range(len(shape) - 2, -1, -1):
        strides[a] = strides[a + 1] * shape[a + 1]
    out = bytearray()
    last = index_maps[-1]
    assert last == list(range(len(last))), "the last axis is only ever cut, never reordered"

    def rec(axis, base):
        if axis == len(shape) - 1:
            start = base * size
            out.extend(raw[start : start + len(last) * size])
            return
        for i in index_maps[axis]:
            rec(axis + 1, base + i * strides[axis])

    if not shape:
        return bytes(raw)
    rec(0, 0)
    return bytes(out)


def slice_file(src_root, out_root, rel, plan):
    meta, tensors, digest = read(src_root / rel)
    rows = plan.get("rows")
    new_meta = dict(meta)
    new_meta["kiln.sliced_from"] = f"shared/reference/{rel} sha256:{digest}"
    seq = None
    if rows is not None:
        dtype, (n, s), raw = tensors["attention_mask"]
        mask = struct.unpack(f"<{n * s}q", raw)
        seq = max(sum(mask[r * s : (r + 1) * s]) for r in rows)
        new_meta["kiln.rows"] = ",".join(map(str, rows))
        new_meta["kiln.seq"] = str(seq)
    after_rows = plan.get("after_rows")
    if after_rows:
        new_meta["kiln.after_rows"] = str(after_rows)
    out = {}
    for name, (dtype, shape, raw) in tensors.items():
        maps = [list(range(d)) for d in shape]
        if rows is not None and name.startswith(BATCH_TENSORS):
            maps[0] = rows
            for a in seq_axes(name):
                maps[a] = list(range(seq))
        if after_rows and name.startswith("after.") and len(shape) == 2:
            maps[0] = list(range(min(after_rows, shape[0])))
        new_shape = [len(m) for m in maps]
        out[name] = (dtype, new_shape, take(dtype, shape, raw, maps) if new_shape != shape else raw)
    write(out_root / rel, new_meta, out)
    if "texts" in plan:
        texts = json.loads((src_root / plan["texts"]).read_text())
        kept = [texts[r] for r in rows]
        (out_root / plan["texts"]).write_text(json.dumps(kept, ensure_ascii=False, indent=2) + "\n")
    for extra in plan.get("copy", []):
        shutil.copyfile(src_root / extra, out_root / extra)
    print(f"{rel}: {(out_root / rel).stat().st_size} bytes (was {(src_root / rel).stat().st_size})")


def main():
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared" / "reference"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "fixtures" / "reference"
    for rel, plan in PLAN.items():
        slice_file(src, out, rel, plan)


if __name__ == "__main__":
    main()
