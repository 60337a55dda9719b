#!/usr/bin/env python3
"""Golden fixtures for perplex-model's Transformer and LSTM tests, made once with PyTorch.

The tests read what this script wrote (committed next to it); they never run Python.

  gpt_*.safetensors / gpt_*.json    tiny GPTs of shared/reference/pytorch_gpt_lm.py
  lstm_*.safetensors / lstm_*.json  tiny nn.LSTM language models (word_language_model, LSTM)

The GPT modules (`Block`, `GPT`) are those of the reference, re-declared with their sizes as
arguments (the reference reads them from its command line and loads Tiny Shakespeare when
imported, so it cannot be imported). Module names, init and forward are copied from it; the
forward stops at the logits instead of the loss. Two things are added for perplex's options:
`rope=True` (rotary positions on q and k, no wpe, half-split layout, as perplex's `rotary.rs`)
and `tied=False` (a separate `head.weight`). After the reference's init every parameter gets
noise N(0, 0.1) so that zero biases and unit LayerNorm weights are tested too.

A tied model is saved without `head.weight` (the tensor is `wte.weight`), the layout perplex
writes and `safetensors.torch.load_model` reads.

The safetensors files are written by `save_safetensors` below (the format is an 8-byte length,
a JSON header and the raw little-endian data), so only torch is needed: the `safetensors`
package's `save_file` needs numpy, which the torch 2.11 environment lacks.

Run with torch 2.11 (PyPI):

  PYTHONPATH=<torch site-packages> python3 make_fixtures.py
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def rope_tables(length, head_dim):
    inv_freq = torch.exp(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
                         * -math.log(10000.0))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, n_embd, n_head, bias, dropout, rope):
        super().__init__()
        E = n_embd
        self.n_head, self.dropout, self.rope = n_head, dropout, rope
        self.ln1 = nn.LayerNorm(E, bias=bias)
        self.qkv = nn.Linear(E, 3 * E, bias=bias)
        self.proj = nn.Linear(E, E, bias=bias)
        self.ln2 = nn.LayerNorm(E, bias=bias)
        self.fc = nn.Linear(E, 4 * E, bias=bias)
        self.fc_proj = nn.Linear(4 * E, E, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, E = x.shape
        H = self.n_head
        q, k, v = self.qkv(self.ln1(x)).split(E, dim=2)
        q, k, v = (t.view(B, T, H, E // H).transpose(1, 2) for t in (q, k, v))
        if self.rope:
            cos, sin = rope_tables(T, E // H)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).contiguous().view(B, T, E)))
        x = x + self.drop(self.fc_proj(F.gelu(self.fc(self.ln2(x)))))
        return x


class GPT(nn.Module):
    def __init__(self, V, n_layer, n_head, n_embd, block, bias, dropout=0.0, rope=False, tied=True):
        super().__init__()
        E = n_embd
        self.wte = nn.Embedding(V, E)
        if not rope:
            self.wpe = nn.Embedding(block, E)
        self.rope = rope
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(E, n_head, bias, dropout, rope) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(E, bias=bias)
        self.head = nn.Linear(E, V, bias=False)
        if tied:
            self.head.weight = self.wte.weight  # tied
        for name, prm in self.named_parameters():
            if prm.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(('proj.weight', 'fc_proj.weight')) else 0.02
                nn.init.normal_(prm, 0.0, std)
            elif 'ln' not in name:
                nn.init.zeros_(prm)

    def forward(self, x):
        T = x.size(1)
        h = self.wte(x)
        if not self.rope:
            h = h + self.wpe(torch.arange(T, device=x.device))
        h = self.drop(h)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h))


class LstmLM(nn.Module):
    """word_language_model's RNNModel, LSTM variant, batch first, with perplex's names."""

    def __init__(self, V, E, H, layers, tied):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.lstm = nn.LSTM(E, H, layers, batch_first=True)
        self.out = nn.Linear(H, V)
        if tied:
            self.out.weight = self.embedding.weight

    def forward(self, x):
        y, (h, c) = self.lstm(self.embedding(x))
        return self.out(y), h, c


def save_safetensors(tensors, path):
    """safetensors (https://github.com/huggingface/safetensors#format) of float32 tensors."""
    assert sys.byteorder == 'little'
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).clone()  # its own storage, exactly its size
        blob = bytes(t.untyped_storage().tolist())
        header[name] = dict(dtype='F32', shape=list(t.shape), data_offsets=[offset, offset + len(blob)])
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def save(name, model, config, input_ids, outputs, skip=()):
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in skip}
    save_safetensors(tensors, os.path.join(HERE, f'{name}.safetensors'))
    doc = dict(config=config, input=input_ids.tolist(), **{k: dict(shape=list(v.shape), values=flat(v))
                                                            for k, v in outputs.items()})
    with open(os.path.join(HERE, f'{name}.json'), 'w') as f:
        json.dump(doc, f)
        f.write('\n')


def gpt_fixture(name, bias, rope, tied, seed):
    torch.manual_seed(seed)
    config = dict(n_layer=2, n_head=2, n_embd=8, block_size=8, bias=bias,
                  positions='rope' if rope else 'learned', tie_weights=tied)
    V = 11
    model = GPT(V, 2, 2, 8, 8, bias, rope=rope, tied=tied).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        logits = model(x)
    save(name, model, dict(vocab_size=V, **config), x, dict(logits=logits),
         skip=('head.weight',) if tied else ())


def lstm_fixture(name, tied, seed):
    torch.manual_seed(seed)
    V, E, H, L = 11, 6, 6, 2
    model = LstmLM(V, E, H, L, tied).eval()
    x = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        logits, h, c = model(x)
    config = dict(vocab_size=V, embedding_dim=E, hidden_size=H, num_layers=L, tie_weights=tied)
    save(name, model, config, x, dict(logits=logits, h=h, c=c),
         skip=('out.weight',) if tied else ())


if __name__ == '__main__':
    gpt_fixture('gpt_learned_tied', bias=False, rope=False, tied=True, seed=1)
    gpt_fixture('gpt_learned_bias_tied', bias=True, rope=False, tied=True, seed=2)
    gpt_fixture('gpt_rope_untied', bias=False, rope=True, tied=False, seed=3)
    lstm_fixture('lstm_untied', tied=False, seed=4)
    lstm_fixture('lstm_tied', tied=True, seed=5)
