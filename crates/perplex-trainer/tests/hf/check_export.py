#!/usr/bin/env python3
"""Load a perplex-exported Hugging Face directory with transformers and report on it.

Usage: python check_export.py DIR INPUT_SAFETENSORS OUT_SAFETENSORS

Loads AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32, output_loading_info=True),
reads `input_ids` (int64 [B, L]) from INPUT_SAFETENSORS, writes the eval-mode float32 `logits`
[B, L, V] to OUT_SAFETENSORS, and prints ONE line of JSON on stdout:
  {"architecture", "missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs", "tied",
   "greedy_ids"}
greedy_ids: input_ids[0, :6] + 20 greedy tokens from generate() with the KV cache, exactly as
make_fixtures.py computes them. Everything else transformers says goes to stderr. A load that
transformers refuses for a shape mismatch is retried with ignore_mismatched_sizes=True (its error
goes into error_msgs), so the report still comes.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

PROMPT_LEN = 6
NEW_TOKENS = 20


def plain(x):
    """JSON-serialisable: sets/tuples to sorted lists, tensors to lists, other objects to str."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (set, frozenset)):
        return sorted((plain(v) for v in x), key=str)
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, torch.Size):
        return list(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: check_export.py DIR INPUT_SAFETENSORS OUT_SAFETENSORS")
    d, inp, outp = sys.argv[1:]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    load_errors = []
    try:
        model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    except RuntimeError as e:
        # transformers 5 raises on a shape mismatch; load again tolerating it so that the report
        # names the mismatched keys (their tensors are then freshly initialised, not loaded).
        load_errors.append(f"{type(e).__name__}: {e}")
        model, info = AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True
        )
    model.eval()
    input_ids = load_file(inp)["input_ids"].to(torch.int64)
    with torch.no_grad():
        logits = model(input_ids).logits.float().contiguous()
    save_file({"logits": logits}, outp)

    prompt = input_ids[0:1, :PROMPT_LEN]
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

    emb_in = model.get_input_embeddings()
    emb_out = model.get_output_embeddings()
    report = {
        "architecture": type(model).__name__,
        "missing_keys": plain(info.get("missing_keys", [])),
        "unexpected_keys": plain(info.get("unexpected_keys", [])),
        "mismatched_keys": plain(info.get("mismatched_keys", [])),
        "error_msgs": load_errors + plain(info.get("error_msgs", [])),
        "tied": bool(emb_out is not None and emb_out.weight is emb_in.weight),
        "greedy_ids": out[0].tolist(),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
