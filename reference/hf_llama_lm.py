#!/usr/bin/env python3
"""transformers' own LlamaForCausalLM, trained in PyTorch eager: the peer of perplex's Llama in
`cargo xtask bench train --model llama` (examples/configs/llama-tinyshakespeare-char.toml).

Character level on Tiny Shakespeare (vocabulary: the sorted characters of the whole file; first
90% train, last 10% validation). Model: LlamaConfig(hidden 128, intermediate 352, 4 layers,
4 query / 2 key-value heads, max positions 64, rms_norm_eps 1e-6, rope_theta 1e4, tied
embeddings), attn_implementation="sdpa". Batches: random windows of block + 1 tokens
(torch.randint). Loss: cross-entropy of the logits (float32) against the next characters.
Optimiser: AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on >= 2-D tensors, 100 warm-up
iterations then cosine decay to 1e-4, gradient clipping 1.0 -- perplex's config.

Prints progress lines and, last, `RESULT {json}` with the median tokens/s over the timed window
and peak RSS. --bench_only runs warm-up + timed steps only; --precision bf16 runs forward and
loss under torch.autocast(bfloat16). Pinned: torch 2.11.0, transformers 5.23.0.
"""
import argparse, json, math, os, resource, statistics, time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument('--data', default=os.path.join(here, '..', 'data', 'tinyshakespeare', 'input.txt'))
p.add_argument('--hidden', type=int, default=128)
p.add_argument('--intermediate', type=int, default=352)
p.add_argument('--layers', type=int, default=4)
p.add_argument('--heads', type=int, default=4)
p.add_argument('--kv_heads', type=int, default=2)
p.add_argument('--block', type=int, default=64)
p.add_argument('--batch', type=int, default=12)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--min_lr', type=float, default=1e-4)
p.add_argument('--warmup_iters', type=int, default=100)
p.add_argument('--max_iters', type=int, default=2000)
p.add_argument('--weight_decay', type=float, default=0.1)
p.add_argument('--clip', type=float, default=1.0)
p.add_argument('--bench_only', action='store_true')
p.add_argument('--warmup', type=int, default=5, help='steps excluded from the timing median')
p.add_argument('--timed', type=int, default=30, help='steps in the timing median window')
p.add_argument('--threads', type=int, default=0)
p.add_argument('--seed', type=int, default=1337)
p.add_argument('--device', default='cpu')
p.add_argument('--precision', choices=['f32', 'bf16'], default='f32')
args = p.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
dev = torch.device(args.device)
text = open(args.data, encoding='utf-8').read()
chars = sorted(set(text))
V = len(chars)
stoi = {c: i for i, c in enumerate(chars)}
ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n = int(0.9 * len(ids))
train_ids = ids[:n]


def log(*a):
    print(*a, flush=True)


def get_batch():
    ix = torch.randint(len(train_ids) - args.block, (args.batch,))
    x = torch.stack([train_ids[i:i + args.block] for i in ix])
    y = torch.stack([train_ids[i + 1:i + 1 + args.block] for i in ix])
    return x.to(dev), y.to(dev)


config = LlamaConfig(vocab_size=V, hidden_size=args.hidden, intermediate_size=args.intermediate,
                     num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     num_key_value_heads=args.kv_heads, max_position_embeddings=args.block,
                     rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                     attention_dropout=0.0, use_cache=False)
model = LlamaForCausalLM._from_config(config, attn_implementation='sdpa').to(dev)
model.train()
nparams = sum(q.numel() for q in model.parameters())
decay = [q for q in model.parameters() if q.dim() >= 2]
no_decay = [q for q in model.parameters() if q.dim() < 2]
opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.weight_decay},
                         {'params': no_decay, 'weight_decay': 0.0}], lr=args.lr, betas=(0.9, 0.99))
log(f'params={nparams} ({nparams/1e6:.2f}M) V={V} train_tokens={len(train_ids)}')


def lr_at(it):
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    r = min(1.0, (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (args.lr - args.min_lr)


def autocast():
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == 'bf16')


times = []
t0_run = time.perf_counter()
iters = args.warmup + args.timed if args.bench_only else args.max_iters
for it in range(iters):
    for g in opt.param_groups:
        g['lr'] = lr_at(it)
    x, y = get_batch()
    t0 = time.perf_counter()
    with autocast():
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if args.clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    opt.step()
    lv = loss.item()
    times.append(time.perf_counter() - t0)
    if it % 100 == 0:
        log(f'iter {it} loss {lv:.4f} step {times[-1]*1000:.1f} ms')
w = times[args.warmup:args.warmup + args.timed] if args.bench_only else times[args.warmup:]
med = statistics.median(w)
res = dict(model='llama (transformers LlamaForCausalLM)', V=V, params=nparams,
           hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
           block=args.block, batch=args.batch, precision=args.precision,
           threads=torch.get_num_threads(), device=str(dev), iters=iters,
           median_step_ms=round(med * 1000, 2), median_tok_per_s=round(args.block * args.batch / med),
           final_loss=lv, wall_s=round(time.perf_counter() - t0_run, 1),
           peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
log('RESULT ' + json.dumps(res))
