"""What a trained SDSAT model is measured by during training: held-out standard-token loss, draft
accuracy per offset, and the two-step greedy decoder's accept rate on HumanEval prompts and on generic
code prompts (the first lines of held-out corpus documents)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from harness.training.data import sample_windows
from harness.training.sdsat_batches import IGNORE, batch_mask, build_sdsat_batch
from harness.training.train import cross_entropy

EVAL_MAX_K = 13  # the paper's Figures 3/4 run k = 1..13
HELDOUT_PROMPT_LINES = 12  # a generic prompt: the first lines of a held-out document
PROGRESS = "eval.partial.json"  # beside eval.json until write_evaluation (EvaluationProgress)
PROGRESS_FORMAT = 2  # 1: sweep points only, under one key


def humaneval_prompts(path: str | None, limit: int) -> list[str]:
    if not path or not Path(path).exists():
        return []
    from harness.prompting import free_prompt

    with gzip.open(path, "rt") as f:  # the whitespace rule, as in run (harness.prompting)
        return [free_prompt(json.loads(line)["prompt"]) for line in itertools.islice(f, limit)]


def heldout_prompts(corpus_dir: str | Path, limit: int) -> list[str]:
    """Generic code prompts no model trained on: the first ``HELDOUT_PROMPT_LINES`` lines of each of the
    first ``limit`` held-out corpus documents (file order: the same prompts for every model of a corpus),
    under the whitespace rule."""
    from harness.prompting import free_prompt
    from harness.training.corpus import read_corpus

    path = Path(corpus_dir) / "heldout.jsonl"
    prompts: list[str] = []
    if not path.exists():
        return prompts
    for doc in read_corpus(path):
        if len(prompts) == limit:
            break
        head = free_prompt("\n".join(doc["text"].splitlines()[:HELDOUT_PROMPT_LINES]))
        if head:
            prompts.append(head)
    return prompts


def greedy_acceptance(lm, prompts: list[str], k: int, max_new_tokens: int, stop_strings: tuple[str, ...] = ()) -> dict:
    """Pooled accept rate and tokens per forward pass of the two-step greedy decoder over prompts."""
    from harness.decoding import SamplingParams, make_decoder
    from harness.prompting import encode, stop_condition

    decoder = make_decoder("sdsat", lm, k=k)
    stop = stop_condition(lm, max_new_tokens, stop_strings)
    acc = dra = new = fwd = 0
    for prompt in prompts:
        st = decoder.generate(encode(lm.tokenizer, prompt), stop, SamplingParams()).stats
        acc, dra, new, fwd = acc + st.accepted, dra + st.drafted, new + st.new_tokens, fwd + st.forward_passes
    return {
        "accept_rate": acc / dra if dra else None,
        "tokens_per_forward": new / fwd if fwd else None,
        "new_tokens": new,
        "forward_passes": fwd,
        "prompts": len(prompts),
    }


class EvaluationProgress:
    """The evaluate stage's finished measurements (each model's held-out metrics, each sweep point), written
    beside eval.json as each one ends, so that an evaluate stage killed by a call's time limit (a 135M
    retrofit measures for longer than one 10-minute call, or than a CPU session) goes on where it stopped.
    Each entry keeps the key of what it measured (weights, data, settings): a retrained model, other data
    or other settings measure afresh."""

    def __init__(self, path: Path):
        self.path = path
        saved = json.loads(path.read_text()) if path.exists() else {}
        self.entries: dict = saved if saved.get("format") == PROGRESS_FORMAT else {"format": PROGRESS_FORMAT}

    def remembered(self, name: str, key: list, measure: Callable[[], dict]) -> dict:
        """The value kept under ``name`` if its key is ``key``; else ``measure()``, kept."""
        from harness.results import replace_atomically

        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        entry = self.entries.get(name)
        if entry is not None and entry["key"] == digest:
            return entry["value"]
        value = measure()
        self.entries[name] = {"key": digest, "value": value}
        replace_atomically(self.path, json.dumps(self.entries))
        return value


def greedy_sweep(
    lm,
    prompts: list[str],
    max_k: int,
    max_new_tokens: int,
    stop_strings,
    log,
    progress: EvaluationProgress,
    name: str,
    key: list,
) -> dict:
    """``greedy_acceptance`` at k = 0..max_k (k = 0: AR), as eval.json holds it; each point kept in
    ``progress`` as ``name/k`` under ``key`` (the sweep's model, settings and prompts)."""
    per_k = {}
    for k in range(max_k + 1):
        per_k[k] = progress.remembered(
            f"{name}/{k}", key, partial(greedy_acceptance, lm, prompts, k, max_new_tokens, stop_strings)
        )
        log(f"[evaluate] k={k}: {per_k[k]}")
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "per_k": per_k}


def humaneval_stop() -> tuple[str, ...]:
    """run's HumanEval stop strings."""
    from harness.tasks import get_task

    return get_task("humaneval").stop


def acceptance_sweeps(lm, cfg, work: Path, log, progress: EvaluationProgress) -> dict:
    """eval.json's ``humaneval_greedy`` and ``heldout_greedy``: the two-step greedy decoder at
    k = 0..min(EVAL_MAX_K, the model's max k) on up to ``cfg.eval_prompts`` HumanEval prompts and as many
    generic code prompts (``work``'s held-out corpus), each set without the prompts that would pass the
    model's positions (``left_out``). Finished points wait in ``progress`` until ``write_evaluation``."""
    from harness.weights import dir_sha256

    max_k, limit, max_new_tokens = min(EVAL_MAX_K, lm.adaptive.max_k), cfg.eval_prompts, cfg.eval_max_new_tokens
    sets = {
        "humaneval_greedy": (humaneval_prompts(cfg.humaneval_path, limit), humaneval_stop()),
        "heldout_greedy": (heldout_prompts(work / "corpus", limit), ()),
    }
    fitting = {name: _fitting(lm, prompts, max_new_tokens + max_k + 1) for name, (prompts, _) in sets.items()}
    key = [dir_sha256(Path(lm.name)), str(lm.dtype), max_k, max_new_tokens, fitting]
    out = {}
    for name, (prompts, stop) in sets.items():
        out[name] = {
            **greedy_sweep(lm, fitting[name], max_k, max_new_tokens, stop, log, progress, name, key),
            "left_out": len(prompts) - len(fitting[name]),
        }
    return out


def write_evaluation(work: Path, results: dict) -> None:
    """``work/eval.json``, the evaluate stage's output; the measurements kept for a continued call are spent."""
    (work / "eval.json").write_text(json.dumps(results, indent=1))
    (work / PROGRESS).unlink(missing_ok=True)


def _fitting(lm, prompts: list[str], room: int) -> list[str]:
    """The prompts that leave ``room`` positions within the model's limit (GPT-2-like: learned ones)."""
    from harness.prompting import encode

    limit = getattr(lm.model.config, "max_position_embeddings", None)
    return [p for p in prompts if not limit or len(encode(lm.tokenizer, p)) + room <= limit]


@torch.no_grad()
def heldout_metrics(
    model,
    stream: np.ndarray,
    seq_len: int,
    adaptive_ids: list[int] | None,
    n_batches: int = 20,
    batch_size: int = 32,
    n_groups: int = 16,
    seed: int = 123,
) -> dict:
    """Standard-token loss (nats/token) on held-out windows; with adaptive ids also the draft accuracy
    per offset (top-1 of A_j equals x_{i+j+1})."""
    device = next(model.parameters()).device
    if len(stream) < 64:
        return {"heldout_standard_loss": None, "note": f"held-out split too small ({len(stream)} tokens)"}
    seq_len = min(seq_len, len(stream) - 1)  # a tiny held-out split (tests) still gives windows
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    std_losses, hits, counts = [], None, None
    for _ in range(n_batches):
        x = torch.from_numpy(sample_windows(stream, batch_size, seq_len, rng)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x).logits
            std_losses.append(float(cross_entropy(logits[:, :-1], x[:, 1:])))
            if adaptive_ids:
                b = build_sdsat_batch(x, adaptive_ids, n_groups, generator=gen)
                mask = batch_mask(model, b.allowed)
                lg = model(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=mask).logits
                t, k = b.seq_len, len(adaptive_ids)
                pred = lg[:, t:].argmax(-1).reshape(x.shape[0], n_groups, k)
                tgt = b.targets[:, t:].reshape(x.shape[0], n_groups, k)
                valid = tgt != IGNORE
                h = ((pred == tgt) & valid).sum(dim=(0, 1)).cpu()
                c = valid.sum(dim=(0, 1)).cpu()
                hits = h if hits is None else hits + h
                counts = c if counts is None else counts + c
    out = {"heldout_standard_loss": float(np.mean(std_losses))}
    if hits is not None:
        out["draft_accuracy_per_offset"] = (hits / counts.clamp(min=1)).tolist()
    return out
