"""A run's plan: the work units (task x problem x decoder x k x sampling x sample) in the order they
run, and which of them a process of a launched run takes. The run's configuration is
:class:`harness.config.RunConfig`."""

from __future__ import annotations

from harness.config import RunConfig
from harness.results import WorkUnit


def plan(cfg: RunConfig, problems: dict[str, list]) -> list[WorkUnit]:
    """A problem's units run back to back. AR (k=0) comes first so that later records can say whether
    they equal it; the other decoders follow in alternating order, forward on even problems and reversed
    on odd ones, so that a machine slowing down or speeding up during a problem favours none of them."""
    from harness.decoding import Options, decoder_options, decoder_spec

    # Each decoder's draft lengths, once: a trained drafter's reach is read from its directory.
    options = Options(**decoder_options(cfg))
    lengths = {d: decoder_spec(d).lengths(cfg.ks, options) for d in cfg.decoders}
    units = []
    for n, (task, p) in enumerate((t, p) for t, ps in problems.items() for p in ps):
        for temp in cfg.temperatures:
            ar, rest = _problem_units(cfg, lengths, task, p, temp)
            units += ar + (rest if n % 2 == 0 else rest[::-1])
    return units


def _problem_units(
    cfg: RunConfig, lengths: dict[str, tuple[int, ...]], task: str, p, temp: float
) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """One problem's units at one temperature: AR's, and every other decoder's (and the control), each
    decoder at its ``lengths``."""
    from harness.decoding import decoder_spec

    ar, rest = [], []
    samples = cfg.n_samples if temp > 0 else 1
    for decoder in cfg.decoders:
        spec = decoder_spec(decoder)
        if spec.control:  # greedy, once, where the data has a reference
            if p.reference is not None and temp == 0:
                rest.append(WorkUnit(task, p.problem_id, decoder, 0, temp, "-", 0))
            continue
        accepts = cfg.accepts if spec.adaptive and temp > 0 else ("-",)
        for k in lengths[decoder]:
            for accept in accepts:
                for s in range(samples):
                    (ar if decoder == "ar" else rest).append(WorkUnit(task, p.problem_id, decoder, k, temp, accept, s))
    return ar, rest


def my_problems(problems: dict[str, list], shard) -> dict[str, list]:
    """This process's share: every N-th problem in plan order (all units of a problem stay together)."""
    numbered = [(t, p) for t, ps in problems.items() for p in ps]
    mine: dict[str, list] = {t: [] for t in problems}
    for n, (t, p) in enumerate(numbered):
        if shard.owns(n):
            mine[t].append(p)
    return mine
