#!/usr/bin/env python3
"""Writes fixtures/tiny-bert-mlm: a randomly initialised BertForMaskedLM (HF layout) and the
PyTorch logits on fixed ids, so kiln's MLM head (and knowledge-neuron attribution, which needs
one) are tested against transformers without a large download. Run once; the files are
committed. Needs torch + transformers."""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

out = sys.argv[1] if len(sys.argv) > 1 else "fixtures/tiny-bert-mlm"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
config = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    # Large init so the random model has peaked, input-dependent outputs (not near-uniform).
    initializer_range=0.3,
)
model = BertForMaskedLM(config).eval()
# Non-zero biases everywhere so a dropped bias cannot pass unnoticed.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.normal_(0.0, 0.1)
model.save_pretrained(out, safe_serialization=True)
ids = torch.tensor([[2, 10, 3, 11, 12, 4, 0, 0], [2, 20, 21, 3, 22, 23, 24, 4]])
mask = (ids != 0).long()
with torch.no_grad():
    o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
save_file(
    {"input_ids": ids.to(torch.int64), "attention_mask": mask, "logits": o.logits.contiguous(),
     "last_hidden_state": o.hidden_states[-1].contiguous()},
    os.path.join(out, "reference.safetensors"),
)
print(json.dumps({k: list(v.shape) for k, v in {"logits": o.logits}.items()}))

# A WordPiece tokenizer over the fixture's 64 ids, so the fixture is a complete model
# directory (`cargo xtask lens neurons` runs on it).
from tokenizers import BertWordPieceTokenizer

WORDS = ["the", "a", "is", "of", "in", "capital", "city", "country", "paris", "france", "rome",
         "italy", "berlin", "germany", "madrid", "spain", "cat", "dog", "red", "blue", "green",
         "sky", "grass", "sea", "color", "has", "was", "and", "to", "it", "on", "big", "small",
         "river", "lives", "speaks", "language", "french", "italian", "german", "spanish",
         "sun", "moon", "hot", "cold", "water", "fire", "tree", "bird", "fish", "sings", "swims",
         "flies", "city's", ".", ",", "##s", "##ed", "##ing"]
specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
vocab = specials + WORDS
assert len(vocab) == config.vocab_size, len(vocab)
with open(os.path.join(out, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
tok = BertWordPieceTokenizer(os.path.join(out, "vocab.txt"), lowercase=True)
tok.save(os.path.join(out, "tokenizer.json"))
os.remove(os.path.join(out, "vocab.txt"))
