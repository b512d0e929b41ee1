"""Turning logits into a target distribution (temperature, top-k, top-p) and drawing from it.

Every decoder and both acceptance rules use these functions, so that 'the target distribution'
means the same thing everywhere. Probabilities are computed in float32 (float64 if the logits are)
and drawn on the CPU with a seeded generator.
"""

from __future__ import annotations

import torch

from harness.decoding.base import SamplingParams


def target_probs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """(…, vocab) logits -> (…, vocab) probabilities of the warped target distribution, on the CPU."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.detach().to("cpu", dtype) / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        logits = logits.masked_fill(outside_nucleus(logits, sampling.top_p), float("-inf"))
    return torch.softmax(logits, dim=-1)


def outside_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Where a token lies outside the nucleus: the mass of the tokens ranked before it already reaches
    top_p (so the first token always stays). The ranking is searched among the top m tokens, m growing
    eightfold until every row's nucleus ends inside them, because sorting a whole 49k vocabulary costs
    about 4 ms a step on a CPU core (more than a small model's forward pass on a GPU) while a nucleus
    usually holds tens of tokens."""
    probs = torch.softmax(logits, dim=-1)
    vocab = probs.shape[-1]
    head = min(64, vocab)
    while True:
        top, order = torch.topk(probs, head, dim=-1)  # descending, like a full sort's first `head`
        outside = (top.cumsum(dim=-1) - top) >= top_p
        if head == vocab or bool(outside[..., -1].all()):
            break
        head = min(head * 8, vocab)
    return torch.ones_like(probs, dtype=torch.bool).scatter(-1, order, outside)


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from a 1-D distribution, by inverting its cumulative mass over the tokens it can
    draw (torch.multinomial walks the whole vocabulary and costs about 1 ms a draw at 49k tokens;
    a nucleus holds tens). The cumulative sum is float64, so its rounding cannot shift a token's share."""
    support = torch.nonzero(probs > 0).squeeze(-1)
    cumulative = probs[support].to(torch.float64).cumsum(dim=0)
    position = int(torch.searchsorted(cumulative, uniform(generator) * cumulative[-1], right=True))
    return int(support[min(position, len(support) - 1)])


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
