#!/usr/bin/env python3
"""Writes the forward-parity references (the minilm/ and gpt2-tiny/ formats of
fixtures/reference/README.md) with PyTorch + transformers: float32, CPU, eager attention,
eval mode, one right-padded batch per file.

    python3 scripts/make_parity_reference.py minilm --model DIR --texts sentences.json --out reference.safetensors
    python3 scripts/make_parity_reference.py minilm --model DIR --texts pairs.json --out reference_pairs.safetensors
    python3 scripts/make_parity_reference.py gpt2 --model DIR --ids FROM.safetensors --out reference.safetensors
    python3 scripts/make_parity_reference.py gpt2 --model DIR --lengths 24 24 17 --seed 11 --out reference.safetensors

`minilm`: BertModel with the checkpoint's tokenizer (`[CLS] a [SEP]`, or `[CLS] a [SEP] b [SEP]`
for a list of pairs, padded to the longest): input_ids, token_type_ids, attention_mask,
hidden_states.0..L (0 = embedding output), attentions.0..L-1 and sentence_embedding (masked
mean of the last hidden state, L2-normalised). `gpt2`: GPT2LMHeadModel on the input ids of
an existing reference (--ids) or random ids of the given lengths: input_ids, attention_mask,
hidden_states.0..L (the last after ln_f, as transformers reports it), attentions, logits.

Then `python3 scripts/slice_reference_fixtures.py DIR` cuts the committed fixtures from the
full files. Not used by CI; needs `pip install torch transformers safetensors`.
"""

import argparse
import json

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertModel, GPT2LMHeadModel


def minilm(args):
    tok = AutoTokenizer.from_pretrained(args.model)
    model = BertModel.from_pretrained(args.model, attn_implementation="eager").eval()
    texts = json.load(open(args.texts))
    if texts and isinstance(texts[0], list):
        enc = tok([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
    else:
        enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True, output_attentions=True)
    tensors = {k: enc[k].to(torch.int64).contiguous() for k in ("input_ids", "token_type_ids", "attention_mask")}
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.contiguous()
    for i, a in enumerate(out.attentions):
        tensors[f"attentions.{i}"] = a.contiguous()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    tensors["sentence_embedding"] = torch.nn.functional.normalize(mean, dim=-1).contiguous()
    meta = {"generator": f"transformers {__import__('transformers').__version__}", "model": args.model_id}
    save_file(tensors, args.out, metadata=meta)


def gpt2(args):
    model = GPT2LMHeadModel.from_pretrained(args.model, attn_implementation="eager").eval()
    if args.ids:
        ref = load_file(args.ids)
        ids, mask = ref["input_ids"], ref["attention_mask"]
    else:
        g = torch.Generator().manual_seed(args.seed)
        seq = max(args.lengths)
        ids = torch.zeros(len(args.lengths), seq, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for r, n in enumerate(args.lengths):
            ids[r, :n] = torch.randint(0, model.config.vocab_size, (n,), generator=g)
            mask[r, :n] = 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    tensors = {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(), "logits": out.logits.contiguous()}
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.contiguous()
    for i, a in enumerate(out.attentions):
        tensors[f"attentions.{i}"] = a.contiguous()
    save_file(tensors, args.out, metadata={"generator": "transformers GPT2LMHeadModel"})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    m = sub.add_parser("minilm")
    m.add_argument("--model", required=True)
    m.add_argument("--model-id", default="sentence-transformers/all-MiniLM-L6-v2")
    m.add_argument("--texts", required=True)
    m.add_argument("--out", required=True)
    g = sub.add_parser("gpt2")
    g.add_argument("--model", required=True)
    g.add_argument("--ids")
    g.add_argument("--lengths", type=int, nargs="+", default=[24, 24, 17])
    g.add_argument("--seed", type=int, default=11)
    g.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(2)
    {"minilm": minilm, "gpt2": gpt2}[args.kind](args)


if __name__ == "__main__":
    main()
