"""Greedy exactness in every dtype: is a speculative decoder's greedy output identical to AR's, a
numerical divergence (a near-tie that rounding decided), or a mismatch (a bug)?

The rule, at the first position ``p`` where the two token sequences differ (their common prefix is
``prompt + tokens[:p]``):
- ``a`` is AR's token there and ``b`` the other decoder's (the end-of-sequence token, where one of them
  stopped at ``p``: the EOS id ranked highest);
- the logits for position ``p`` are recomputed twice, in one plain forward pass over the common prefix:
  in the run's dtype (``lo``) and in a higher precision (``hi``: fp32 for bf16/fp16 runs, fp64 for fp32);
- ``delta = max_v |lo[v] - hi[v]|`` is the dtype's rounding error on this position's logits, measured;
- ``gap = |hi[a] - hi[b]|`` is how far apart the two candidates truly are;
- **numerical** when ``gap <= 2 * delta``: each of the two low-precision computations that chose (AR's and
  the speculative pass's, which uses other kernels for a block of tokens) may be off by about ``delta``
  on each of the two logits, so their ranking can flip when the true gap is within twice that;
  otherwise **mismatch**: no rounding explains choosing ``b``.
A bug (a draft accepted without verification, an off-by-one) emits a token the model does not rank
near the top, whose gap is many times the rounding error; a real bf16 divergence is a near-tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

# The precision that judges a run's divergences, by the run's --dtype (fp64 is judged by itself).
HIGHER_PRECISION = {"bf16": "fp32", "fp16": "fp32", "fp32": "fp64", "fp64": "fp64"}


@dataclass
class Exactness:
    exactness: str  # identical | numerical | mismatch
    first_divergence: int | None = None
    evidence: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where ``a`` and ``b`` differ (the shorter one's length if one is a
    prefix of the other), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def position_logits(model, ids: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """The next-token logits after ``ids``, from one plain forward pass (no cache) in ``dtype``."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(torch.as_tensor([list(ids)], device=device), use_cache=False, logits_to_keep=1)
    return out.logits[0, -1].to(dtype)


def _candidate(tokens: Sequence[int], p: int, stop_reason: str, eos_ids: frozenset[int], hi: torch.Tensor):
    if p < len(tokens):
        return tokens[p]
    if stop_reason == "eos" and eos_ids:
        ids = sorted(eos_ids)
        return ids[int(torch.argmax(hi[ids]))]
    return None


def classify(
    model_lo,
    model_hi,
    prompt_ids: Sequence[int],
    ar: tuple[Sequence[int], str],
    other: tuple[Sequence[int], str],
    eos_ids: frozenset[int],
) -> Exactness:
    """``ar`` and ``other``: (tokens, stop reason) of AR's and the speculative decoder's greedy outputs.
    ``model_lo`` is the run's model, ``model_hi`` the same weights in a higher precision."""
    (ar_tokens, ar_stop), (tokens, stop) = ar, other
    p = first_divergence(ar_tokens, tokens)
    if p is None:
        return Exactness("identical")
    context = [*prompt_ids, *ar_tokens[:p]]
    hi = position_logits(model_hi, context, torch.float64)
    lo = position_logits(model_lo, context, torch.float64)
    a, b = _candidate(ar_tokens, p, ar_stop, eos_ids, hi), _candidate(tokens, p, stop, eos_ids, hi)
    if a is None or b is None:  # one stopped at p for a reason no token explains
        return Exactness("mismatch", p, {"position": p, "reason": f"ended without a token ({ar_stop} / {stop})"})
    delta = float((lo - hi).abs().max())
    gap = float((hi[a] - hi[b]).abs())
    evidence = {
        "position": p,
        "ar_token": a,
        "token": b,
        "gap": gap,
        "delta": delta,
        "lo_margin": float(lo[a] - lo[b]),
        "rule": "gap <= 2 * delta",
    }
    return Exactness("numerical" if gap <= 2 * delta else "mismatch", p, evidence)


class GreedyComparison:
    """AR's greedy outputs in this run, per problem, and every other greedy output's exactness against
    them. ``load_higher`` gives the model in the higher precision, loaded on the first divergence only."""

    def __init__(self, model, load_higher, previous: Sequence[dict] = ()):
        self.model = model
        self.load_higher = load_higher
        self._higher = None
        self.ar: dict[tuple[str, str], tuple[str, list[int] | None, str]] = {}
        for r in previous:
            if r["decoder"] == "ar" and r["temperature"] == 0:
                self.ar[(r["task"], r["problem_id"])] = (r["completion"], r.get("token_ids"), r["stop_reason"])

    def fields(self, unit, gen, prompt_ids: Sequence[int], eos_ids: frozenset[int], control: bool) -> dict:
        """A record's exactness fields: ``identical_to_ar`` (same text), ``exactness``, ``first_divergence``
        and its evidence; null where the record is not greedy, is AR itself or has no AR to compare with."""
        none = {"identical_to_ar": None, "exactness": None, "first_divergence": None, "exactness_evidence": None}
        key = (unit.task, unit.problem_id)
        if unit.temperature != 0 or control:
            return none
        if unit.decoder == "ar":
            self.ar[key] = (gen.text, list(gen.tokens), gen.stop_reason)
            return {**none, "identical_to_ar": True}
        if key not in self.ar:
            return none
        text, tokens, stop_reason = self.ar[key]
        fields = {**none, "identical_to_ar": gen.text == text}
        if tokens is None:  # AR's record predates token ids: text equality only
            return fields
        if self._higher is None and first_divergence(tokens, gen.tokens) is not None:
            self._higher = self.load_higher()
        result = classify(
            self.model, self._higher, prompt_ids, (tokens, stop_reason), (gen.tokens, gen.stop_reason), eos_ids
        )
        return {
            **fields,
            "exactness": result.exactness,
            "first_divergence": result.first_divergence,
            "exactness_evidence": result.evidence,
        }
