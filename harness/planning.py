"""What a run is: its configuration (every run default written once, here) and its plan, the work
units (task x problem x decoder x k x sampling x sample) in the order they run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from harness.errors import HarnessError
from harness.results import WorkUnit

# A control, not a decoder: the dataset's reference solution scored as a completion through the same
# prompt, assembly and sandbox, so a scoring regression shows as its pass@1 falling below 1 (CI gates it).
REFERENCE = "reference"


@dataclass(frozen=True)
class RunConfig:
    model: str
    tasks: tuple[str, ...]
    decoders: tuple[str, ...] = ("ar", "sdsat")
    ks: tuple[int, ...] = (0, 1, 3, 5, 7)
    temperatures: tuple[float, ...] = (0.0,)
    top_p: float = 0.95  # when sampling; greedy records carry 1.0
    top_k: int = 0
    accepts: tuple[str, ...] = ("exact",)
    n_samples: int = 1
    repeats: int = 1  # times each generation is timed; its record keeps the median-time one
    limit: int | None = None
    max_new_tokens: int = 256
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    data_dir: str | None = None
    adaptive_tokens: str | None = None
    draft_model: str | None = None  # hf-assisted's draft model
    groups: str = "all"  # sdsat-fused's group policy: all, or comma-separated acceptance lengths
    engine: str = "auto"  # ar/sdsat/sdsat-fused passes: auto (compile on CUDA, eager on CPU) | eager | static | compile
    attn_implementation: str = "sdpa"  # transformers' attention kernel: sdpa | eager
    fim_order: str = "psm"
    allow_code_execution: bool = False
    isolation: str | None = None  # the sandbox's level; None: the strongest namespace level available
    skip_unavailable: bool = False  # execute what can be, and leave tasks without a toolchain unscored

    def identity(self) -> dict:
        """What makes two runs' records comparable: everything but where the data lives and execution."""
        d = asdict(self)
        for key in ("data_dir", "allow_code_execution", "isolation", "skip_unavailable"):
            d.pop(key)
        return json.loads(json.dumps(d))

    @classmethod
    def default_identity(cls, model: str, tasks: tuple[str, ...]) -> dict:
        """The identity of a run that changed no default (what an older run.json's missing keys mean)."""
        return cls(model=model, tasks=tasks).identity()


DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.name not in ("model", "tasks")}


def _items(convert: Callable) -> Callable:
    """A list setting, from a suite's list or a flag's comma-separated text."""

    def parse(value) -> tuple:
        parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(convert(p) for p in parts)

    return parse


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


# The settings a suite may set and a `run` flag overrides: (flag / suite key, RunConfig field, parser).
SETTINGS: tuple[tuple[str, str, Callable], ...] = (
    ("decoders", "decoders", _items(str)),
    ("k", "ks", _items(int)),
    ("temperature", "temperatures", _items(float)),
    ("top_p", "top_p", float),
    ("accept", "accepts", _items(str)),
    ("n_samples", "n_samples", int),
    ("repeats", "repeats", int),
    ("limit", "limit", _optional_int),
    ("max_new_tokens", "max_new_tokens", int),
    ("draft_model", "draft_model", lambda v: v),
    ("groups", "groups", str),
)
SUITE_KEYS = {"name", "tasks", "data_tasks", "models", *(key for key, _, _ in SETTINGS)}


def settings(flags: dict, suite: dict) -> dict:
    """RunConfig fields from the flags given (None: not given), else the suite's, else the default;
    a malformed value or an unknown suite key is one line."""
    unknown = sorted(set(suite) - SUITE_KEYS)
    if unknown:
        raise HarnessError(f"suite '{suite.get('name')}': unknown setting(s) {', '.join(unknown)}")
    chosen = {}
    for key, field_name, parse in SETTINGS:
        value = flags.get(key)
        if value is None:
            value = suite.get(key, DEFAULTS[field_name])
        try:
            chosen[field_name] = parse(value)
        except (TypeError, ValueError):
            flag = "--" + key.replace("_", "-")
            raise HarnessError(f"{flag}: malformed value '{value}'") from None
    return chosen


def default_text(field_name: str) -> str:
    """A default as a flag would write it (for --help)."""
    value = DEFAULTS[field_name]
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def plan(cfg: RunConfig, problems: dict[str, list]) -> list[WorkUnit]:
    """A problem's units run back to back. AR (k=0) comes first so that later records can say whether
    they equal it; the other decoders follow in alternating order, forward on even problems and reversed
    on odd ones, so that a machine slowing down or speeding up during a problem favours none of them."""
    units = []
    for n, (task, p) in enumerate((t, p) for t, ps in problems.items() for p in ps):
        for temp in cfg.temperatures:
            ar, rest = _problem_units(cfg, task, p, temp)
            units += ar + (rest if n % 2 == 0 else rest[::-1])
    return units


def _problem_units(cfg: RunConfig, task: str, p, temp: float) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """One problem's units at one temperature: AR's, and every other decoder's (and the control)."""
    from harness.decoding import decoder_spec

    ar, rest = [], []
    samples = cfg.n_samples if temp > 0 else 1
    for decoder in cfg.decoders:
        if decoder == REFERENCE:
            if p.reference is not None and temp == 0:
                rest.append(WorkUnit(task, p.problem_id, decoder, 0, temp, "-", 0))
            continue
        spec = decoder_spec(decoder)
        accepts = cfg.accepts if spec.takes_k and temp > 0 else ("-",)
        for k in spec.lengths(cfg.ks):
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
