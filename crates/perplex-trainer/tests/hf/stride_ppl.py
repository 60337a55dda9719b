#!/usr/bin/env python3
"""Strided sliding-window perplexity, exactly as transformers' guide computes it.

Usage: python stride_ppl.py DIR INPUT_SAFETENSORS MAX_LENGTH STRIDE

The loop of "Perplexity of fixed-length models" (transformers docs/source/en/perplexity.md, the
GPT-2 example) over the 1-D int64 tensor `ids` [n] of INPUT_SAFETENSORS, with the model
AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32) in eval mode on the CPU.
Prints ONE line of JSON:
  nll_sum, n_tokens, mean_nll, ppl   the guide's numbers: per window it adds
      outputs.loss * num_loss_tokens, num_loss_tokens = (target_ids != -100).sum() - batch_size
      (it subtracts one per window for the model's internal label shift); accumulated in float64.
  exact_nll_sum, exact_n_tokens, exact_mean_nll, exact_ppl   the same windows and targets, but
      summing the per-token NLL of exactly the targets the model scores (float64).
The two agree when STRIDE >= MAX_LENGTH (windows do not overlap: each window's first target sits
at position 0 and is never scored). With overlapping windows (STRIDE < MAX_LENGTH) every window
after the first has its first target at position >= 1, which the model DOES score, so the guide
counts one token fewer than it scores per such window: its n_tokens is n - (number of windows),
and its nll_sum re-weights each window's mean by (trg_len - 1) instead of trg_len; the exact
numbers score each of the n - 1 predictable tokens exactly once.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
import transformers
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: stride_ppl.py DIR INPUT_SAFETENSORS MAX_LENGTH STRIDE")
    d, inp = sys.argv[1], sys.argv[2]
    max_length, stride = int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    ids = load_file(inp)["ids"].to(torch.int64).reshape(1, -1)  # encodings.input_ids: [1, n]
    seq_len = ids.size(1)

    nll_sum = 0.0  # python floats: float64 accumulation
    n_tokens = 0
    exact_nll_sum = 0.0
    exact_n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100

        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            # mean cross-entropy over the valid labels after the model's internal shift
            neg_log_likelihood = outputs.loss

        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # the guide: internal label shift
        nll_sum += neg_log_likelihood.item() * num_loss_tokens
        n_tokens += num_loss_tokens

        # what the model actually scored: logits[:, :-1] against target_ids[:, 1:]
        logits = outputs.logits[:, :-1].double()
        labels = target_ids[:, 1:]
        tok_nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                  ignore_index=-100, reduction="none")
        exact_nll_sum += tok_nll.sum().item()
        exact_n_tokens += (labels != -100).sum().item()

        prev_end_loc = end_loc
        if end_loc == seq_len:
            break

    mean_nll = nll_sum / n_tokens
    exact_mean_nll = exact_nll_sum / exact_n_tokens
    print(json.dumps({
        "nll_sum": nll_sum,
        "n_tokens": n_tokens,
        "mean_nll": mean_nll,
        "ppl": math.exp(mean_nll),
        "exact_nll_sum": exact_nll_sum,
        "exact_n_tokens": exact_n_tokens,
        "exact_mean_nll": exact_mean_nll,
        "exact_ppl": math.exp(exact_mean_nll),
    }))


if __name__ == "__main__":
    main()
