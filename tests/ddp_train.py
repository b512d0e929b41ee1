"""Run by test_distributed under ``accelerate launch`` with two processes: a few SDSAT training steps
of a tiny Llama under DDP (gloo on CPU); each process reports its step count and a weight checksum."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from transformers import LlamaForCausalLM

from harness.training.checkpoint import llama_config
from harness.training.train import TrainConfig, train


def main(out_prefix: str) -> None:
    torch.manual_seed(0)  # the same initial weights in every process
    model = LlamaForCausalLM(llama_config(64, hidden=32, layers=2, heads=2, intermediate=64))
    stream = np.random.default_rng(0).integers(20, 64, size=20_000).astype(np.int32)
    cfg = TrainConfig(
        mode="sdsat",
        seq_len=32,
        batch_size=4,
        max_steps=64,
        n_groups=3,
        grad_accum=2,
        log_every=16,
        warmup=5,
        time_budget_s=1e9,
    )
    model, summary = train(model, stream, cfg, f"{out_prefix}.log.jsonl", [10, 11, 12])
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump({"steps": summary["steps"], "tokens": summary["tokens"], "checksum": checksum}, f)


if __name__ == "__main__":
    main(sys.argv[1])
