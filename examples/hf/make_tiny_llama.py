#!/usr/bin/env python3
"""A small random Llama saved with transformers' save_pretrained: a stand-in for a checkpoint
downloaded from the Hugging Face Hub (which this machine cannot reach), for the walk-through of
docs/hugging-face.md.

Usage: python make_tiny_llama.py CORPUS.txt OUT_DIR

OUT_DIR gets what `save_pretrained` writes for a model and its tokenizer: config.json,
generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json. The tokenizer
is a byte-level BPE of 1,024 tokens trained on CORPUS (`<|endoftext|>` as BOS/EOS); the model a
LlamaForCausalLM of 4 layers, width 256, 8 query and 2 key/value heads, MLP 704, 256 positions,
untied head, random weights (seed 0). Needs torch and transformers (the test environment of
`cargo xtask test` has both: ~/.cache/perplex/torch-2.11.0/bin/python).
"""
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

corpus, out = sys.argv[1], sys.argv[2]
eot = "<|endoftext|>"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=[eot],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train([corpus], trainer)
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot)

torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704,
                     num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                     max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
model = LlamaForCausalLM(config)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
n = sum(p.numel() for p in model.parameters())
print(f"{out}: LlamaForCausalLM, {n:,} parameters, tokenizer of {len(tokenizer)} tokens")
