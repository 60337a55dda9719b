#!/usr/bin/env python3
"""Golden fixtures for perplex's Hugging Face compatibility tests.

Usage: python make_fixtures.py OUT_DIR

Pinned: transformers==5.23.0, torch==2.11.0 (tokenizers 0.23.x, safetensors 0.8.x); CPU, float32,
deterministic (torch.manual_seed(0) before building each model). Writes, for every NAME in MODELS:

  OUT/NAME/                   a tiny random model: config.json, generation_config.json,
                              model.safetensors (or model-0000k-of-0000n.safetensors +
                              model.safetensors.index.json for llama_sharded), tokenizer.json,
                              tokenizer_config.json
  OUT/NAME.expected.safetensors
      input_ids   int64 [2, L]   (L = 64 for gpt2, 80 for the llamas/qwen2/mistral)
      logits      f32 [2, L, V]  eval-mode forward
      grad.P      f32            P.grad after model.train(); model(input_ids, labels=input_ids).loss.backward()
      after.P     f32            P after one torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.01) step on those gradients
      long_input_ids int64 [1, 200], long_logits f32 [1, 200, V]   (llama_gqa, llama_gqa_legacy only)
  OUT/NAME.expected.json
      architecture, vocab_size, config (config.json as written), loss (HF's shifted mean CE),
      param_names (named_parameters order; tied weights appear once), tied, greedy_ids
      (prompt input_ids[0, :6] + 20 greedy tokens from generate() with the KV cache),
      greedy_min_margin (smallest top-1 minus top-2 logit gap over those 20 steps)

Every expected output is computed from the model as loaded back from its directory with
dtype=torch.float32 (so llama_bf16 gives bf16-stored weights computed in fp32).

RoPE spelling in config.json. transformers 5 writes a single nested dict:
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}
(and {"rope_type": "default", "rope_theta": 10000.0} without scaling), with no top-level
rope_theta / rope_scaling. Checkpoints written by transformers 4.x (most of the Hub) use the
legacy spelling instead, which llama_gqa_legacy reproduces:
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
(older ones spell "type" for "rope_type"; rope_scaling is null without scaling).
"""

import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
import transformers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

assert transformers.__version__ == "5.23.0", transformers.__version__

EOT = "<|endoftext|>"
PROMPT_LEN = 6
NEW_TOKENS = 20
# 10x transformers' default 0.02: with 0.02 these tiny models have near-uniform attention (q.k
# scores ~1e-2, so RoPE and masking bugs barely move the logits) and near-tied greedy argmaxes.
INIT_STD = 0.2

CORPUS = """The quick brown fox jumps over the lazy dog near the river bank.
A language model assigns probabilities to sequences of tokens.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
In 1969, two astronauts walked on the Moon while a third orbited above them.
Rust programs are compiled ahead of time into fast native code.
The library opened at nine o'clock, but nobody came until noon.
Gradient descent takes small steps downhill on the loss surface.
My grandmother baked bread every Sunday morning for forty years.
How many roads must a man walk down before you call him a man?
Attention is computed from queries, keys and values for every head.
The train to Edinburgh leaves platform four at half past six.
Photosynthesis turns sunlight, water and carbon dioxide into sugar.
"Don't forget your umbrella," he said, glancing at the grey sky.
Prime numbers such as 2, 3, 5, 7, 11 and 13 have exactly two divisors.
The orchestra tuned their instruments before the conductor arrived.
A byte-level tokenizer never meets a character it cannot encode.
Mountains in the north were covered with snow until late April.
Please send the quarterly report to the finance team by Friday.
The cat slept on the warm windowsill all afternoon long.
Learning rates that are too large make training diverge quickly.
Every river flows toward the sea, though some take the longest way.
He counted the coins twice: forty-two pennies and seven dimes.
The museum's new exhibit features ancient maps of the Mediterranean.
Water boils at one hundred degrees Celsius at sea level.
They planted tomatoes, beans and sunflowers along the garden fence.
Residual connections help very deep networks train without trouble.
On Tuesday the market was quiet; on Wednesday it was chaos.
Whales communicate with songs that travel for hundreds of miles.
The recipe calls for two cups of flour and a pinch of salt.
Our team shipped version 2.0 after months of careful testing.
Light from distant galaxies left them billions of years ago.
The detective noticed muddy footprints leading to the back door.
Normalization layers rescale activations to keep them well behaved.
Children laughed as the kite climbed higher into the blue sky.
An old lighthouse still guides ships past the rocky coast at night.
Tokens, embeddings, layers, logits: the pipeline is simple enough.
The bakery on the corner sells croissants, muffins and rye bread.
If it rains tomorrow, the football match will be postponed.
Bees visit thousands of flowers to make a single spoonful of honey.
The end of one story is often the beginning of another.
"""


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)


def randomise_(params, pred, fn):
    with torch.no_grad():
        for name, p in params:
            if pred(name):
                p.copy_(fn(p))


def noise(std):
    return lambda p: torch.randn_like(p) * std


def around_one(p):
    return 1.0 + 0.1 * torch.randn_like(p)


def is_norm_weight(name):
    return name.endswith(".weight") and (
        "norm" in name or ".ln_" in name or name.startswith("ln_") or "ln_f" in name
    )


# ---------------------------------------------------------------------------------- models


def llama_config(V, eot, **kw):
    base = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        initializer_range=INIT_STD,
        bos_token_id=eot,
        eos_token_id=eot,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    base.update(kw)
    return LlamaConfig(**base)


def build(name, V, eot):
    """The freshly initialised (and partly re-randomised) model for NAME, and its save kwargs."""
    save_kw = {}
    if name == "gpt2":
        cfg = GPT2Config(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            initializer_range=INIT_STD,
            bos_token_id=eot,
            eos_token_id=eot,
        )
        model = GPT2LMHeadModel(cfg)
        params = list(model.named_parameters())
        randomise_(params, lambda n: n.endswith(".bias"), noise(0.02))
        randomise_(params, is_norm_weight, around_one)
    elif name == "llama_gqa":
        cfg = llama_config(
            V,
            eot,
            head_dim=16,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
        model = LlamaForCausalLM(cfg)
        randomise_(list(model.named_parameters()), is_norm_weight, around_one)
    elif name == "llama_mha":
        model = LlamaForCausalLM(llama_config(V, eot, num_key_value_heads=4))
        randomise_(list(model.named_parameters()), is_norm_weight, around_one)
    elif name == "llama_mqa_tied":
        cfg = llama_config(
            V, eot, num_key_value_heads=1, tie_word_embeddings=True, rms_norm_eps=1e-2, mlp_bias=True
        )
        model = LlamaForCausalLM(cfg)
        params = list(model.named_parameters())
        randomise_(params, is_norm_weight, around_one)
        randomise_(params, lambda n: ".mlp." in n and n.endswith(".bias"), noise(0.02))
    elif name == "qwen2":
        cfg = Qwen2Config(
            vocab_size=V + 16,  # padded embedding, as real Qwen checkpoints have
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            attention_dropout=0.0,
            initializer_range=INIT_STD,
            bos_token_id=eot,
            eos_token_id=eot,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        model = Qwen2ForCausalLM(cfg)
        params = list(model.named_parameters())
        randomise_(params, is_norm_weight, around_one)
        randomise_(params, lambda n: n.endswith(".bias"), noise(0.1))
    elif name == "mistral":
        cfg = MistralConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            sliding_window=None,
            attention_dropout=0.0,
            initializer_range=INIT_STD,
            bos_token_id=eot,
            eos_token_id=eot,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        model = MistralForCausalLM(cfg)
        randomise_(list(model.named_parameters()), is_norm_weight, around_one)
    elif name == "llama_sharded":
        cfg = llama_config(V, eot, num_key_value_heads=4, hidden_size=64, intermediate_size=128)
        model = LlamaForCausalLM(cfg)
        randomise_(list(model.named_parameters()), is_norm_weight, around_one)
        save_kw["max_shard_size"] = "100KB"
    elif name == "llama_bf16":
        model = LlamaForCausalLM(llama_config(V, eot, num_key_value_heads=4))
        randomise_(list(model.named_parameters()), is_norm_weight, around_one)
        model = model.to(torch.bfloat16)
    else:
        raise ValueError(name)
    return model, save_kw


def write_legacy(src, dst):
    """Copy SRC to DST with config.json in transformers 4's rope spelling."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp  # {"rope_type": "llama3", "factor": ..., ...}
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


# ------------------------------------------------------------------------------- expected


def load(d):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    return model


def greedy(model, prompt):
    """generate() with the KV cache: exactly NEW_TOKENS greedy tokens, no EOS handling (so no
    logits processor touches the scores); checked against a cache-free argmax loop."""
    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen)
        assert out.shape == (1, PROMPT_LEN + NEW_TOKENS), out.shape
        ids = prompt
        margin = float("inf")
        for _ in range(NEW_TOKENS):
            last = model(ids, use_cache=False).logits[:, -1]
            top2 = last.topk(2, dim=-1).values[0]
            margin = min(margin, (top2[0] - top2[1]).item())
            ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids), (out, ids)
    return out[0].tolist(), margin


def expected(name, d, out_dir, n_tok, seq_len, long=False):
    torch.manual_seed(0)
    model = load(d)
    V = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, n_tok, (2, seq_len), generator=g, dtype=torch.int64)
    tensors = {"input_ids": input_ids}
    with torch.no_grad():
        tensors["logits"] = model(input_ids).logits.float().contiguous()
        if long:
            long_ids = torch.randint(0, n_tok, (1, 200), generator=g, dtype=torch.int64)
            tensors["long_input_ids"] = long_ids
            tensors["long_logits"] = model(long_ids).logits.float().contiguous()

    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.train()
    out = model(input_ids, labels=input_ids)
    out.loss.backward()
    named = list(model.named_parameters())
    for n, p in named:
        assert p.grad is not None, n
        tensors["grad." + n] = p.grad.detach().float().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.step()
    for n, p in named:
        tensors["after." + n] = p.detach().float().clone()

    greedy_ids, margin = greedy(load(d), input_ids[0:1, :PROMPT_LEN])

    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    meta = {
        "architecture": type(model).__name__,
        "vocab_size": V,
        "config": config,
        "loss": out.loss.item(),
        "param_names": [n for n, _ in named],
        "tied": tied,
        "greedy_ids": greedy_ids,
        # smallest top-1 minus top-2 logit over the 20 greedy steps: how close a tie came
        "greedy_min_margin": margin,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, name + ".expected.safetensors"))
    with open(os.path.join(out_dir, name + ".expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return tensors


MODELS = [
    "gpt2",
    "llama_gqa",
    "llama_gqa_legacy",
    "llama_mha",
    "llama_mqa_tied",
    "qwen2",
    "mistral",
    "llama_sharded",
    "llama_bf16",
]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixtures.py OUT_DIR")
    t0 = time.process_time()
    w0 = time.time()
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    tokenizer = train_tokenizer()
    n_tok = len(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    results = {}
    for name in MODELS:
        d = os.path.join(out_dir, name)
        if name == "llama_gqa_legacy":
            write_legacy(os.path.join(out_dir, "llama_gqa"), d)
        else:
            if os.path.exists(d):
                shutil.rmtree(d)
            torch.manual_seed(0)
            model, save_kw = build(name, n_tok, eot)
            model.save_pretrained(d, **save_kw)
            tokenizer.save_pretrained(d)
        seq_len = 64 if name == "gpt2" else 80
        results[name] = expected(name, d, out_dir, n_tok, seq_len, long=name.startswith("llama_gqa"))
        print(f"{name}: {sorted(os.listdir(d))}", flush=True)

    a, b = results["llama_gqa"], results["llama_gqa_legacy"]
    for k in ("logits", "long_logits"):
        assert torch.equal(a[k], b[k]), f"legacy rope spelling changed {k}"
    print(f"make_fixtures: {len(MODELS)} models in {out_dir}; "
          f"cpu {time.process_time() - t0:.1f} s, wall {time.time() - w0:.1f} s")


if __name__ == "__main__":
    main()
