"""The model card a retrofit writes beside its checkpoint: what was trained, on what, and the numbers
its evaluation measured (nothing here is typed by hand)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from harness.training.config import RecipeConfig

# The settings a retrofit reads (the rest of RecipeConfig builds a model from scratch).
RETROFIT_SETTINGS = frozenset(
    [
        "base",
        "roots",
        "corpus",
        "data_dir",
        "lora_rank",
        "adaptive_tokens",
        "adaptive_init",
        "retrofit_lr",
        "lora_lr",
        "fim_rate",
        "seq_len",
        "max_k",
        "n_groups",
        "adaptive_weight",
        "distill",
        "batch_size",
        "grad_accum",
        "max_steps",
        "sdsat_minutes",
        "bf16",
        "seed",
        "eval_prompts",
        "eval_max_new_tokens",
    ]
)


def write_card(path: Path, cfg: RecipeConfig, work: Path, results: dict) -> None:
    summary = json.loads((work / "sdsat_summary.json").read_text())
    manifest = json.loads((work / "corpus" / "manifest.json").read_text())
    method = f"LoRA, rank {cfg.lora_rank} on every linear layer" if cfg.lora_rank else "full fine-tune"
    lines = [
        f"# SDSAT retrofit of `{cfg.base}`",
        "",
        f"Made by `sdsat-bench train --base {cfg.base}` ({method}; settings below). Load it with "
        f"`--model {path.parent}` in `run`, `decode` and `probe`.",
        "",
        *_loss_table(results),
        "",
        *_acceptance_table(results),
        "",
        "## Training",
        "",
        f"- {method}; {summary['steps']} optimiser steps, {summary['tokens']:,} tokens, "
        f"{summary['seconds']:.0f} s on {results['device']}"
        + (f", {summary['steady_tokens_per_s']:,.0f} tokens/s" if "steady_tokens_per_s" in summary else ""),
        f"- corpus: {manifest['kept']} documents kept of {manifest.get('candidates', '?')} "
        f"(rejected: {manifest.get('rejected', {})}), {manifest.get('train_tokens', 0):,} training and "
        f"{manifest.get('heldout_tokens', 0):,} held-out tokens; decontaminated against "
        f"{manifest['eval_ngrams']:,} {manifest['ngram']}-grams of the evaluation sets",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps({k: v for k, v in asdict(cfg).items() if k in RETROFIT_SETTINGS}, indent=1, default=str),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def _loss_table(results: dict) -> list[str]:
    base, sdsat = results["base"], results["sdsat"]
    b, s = base.get("heldout_standard_loss"), sdsat.get("heldout_standard_loss")
    if b is None or s is None:
        return [f"Held-out standard loss: not measured ({base.get('note') or sdsat.get('note')})."]
    rows = [
        "| held-out standard-token loss (nats/token) | base | SDSAT | change |",
        "|---|---|---|---|",
        f"| plain documents of the held-out split | {b:.4f} | {s:.4f} | {100 * (s - b) / b:+.2f}% |",
    ]
    accuracy = sdsat.get("draft_accuracy_per_offset")
    if accuracy:
        rows += [
            "",
            "Draft accuracy per offset j (top-1 of adaptive token A_j equals the held-out token j ahead):",
            "",
            "| j | " + " | ".join(str(j + 1) for j in range(len(accuracy))) + " |",
            "|---|" + "---|" * len(accuracy),
            "| accuracy | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |",
        ]
    return rows


def _acceptance_table(results: dict) -> list[str]:
    greedy = results["humaneval_greedy"]
    if not greedy["prompts"]:
        why = f"all {greedy['left_out']} are longer than the model's positions allow" if greedy.get("left_out") else ""
        return [f"Greedy acceptance: not measured (no HumanEval prompts{': ' + why if why else ''})."]
    rows = [
        f"Greedy two-step decoding (`sdsat`) on the first {greedy['prompts']} HumanEval prompts, "
        f"{greedy['max_new_tokens']} new tokens at most (k = 0 is AR):",
        "",
        "| k | accept rate | tokens per forward pass |",
        "|---|---|---|",
    ]
    for k, m in greedy["per_k"].items():
        rate = "—" if m["accept_rate"] is None else f"{m['accept_rate']:.3f}"
        rows.append(f"| {k} | {rate} | {m['tokens_per_forward']:.2f} |")
    return rows
