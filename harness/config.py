"""Every setting of `run`, `decode` and `probe`, each default written once, here.

The dataclasses are what the harness runs on, and the commands' flags are generated from their fields
(`train`'s from :class:`harness.training.config.RecipeConfig`'s): a field's metadata says its flag's
help, the flag's name where it is not the field's, how a flag's text is parsed, and whether a suite
(``tasks/suites/*.yaml``) may set it. Torch-free, so that ``--help`` and every check made before a
model loads import nothing heavy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from harness.errors import HarnessError

ENGINES = ("eager", "static", "compile")  # how our decoders' passes run (harness.engine)
ENGINE_CHOICES = ("auto", *ENGINES)  # auto: compile on CUDA, eager on CPU
# lookahead's window W and guess set G: lade's documented configuration (LEVEL=5, WINDOW_SIZE=7, GUESS_SET_SIZE=7)
LOOKAHEAD_WINDOW = 7
LOOKAHEAD_GUESSES = 7


def _items(convert: Callable) -> Callable:
    """A list setting, from a suite's list or a flag's comma-separated text."""

    def parse(value) -> tuple:
        parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(convert(p) for p in parts)

    return parse


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def setting(default: Any, help: str, *, flag: str | None = None, parse: Callable | None = None, **argparse_kw):
    """A field with a flag: ``help`` (its default is appended), the flag's name where it is not the
    field's (``flag``), how its text is parsed (``parse``, else the field's type), and further
    ``add_argument`` keywords (``choices``, ``metavar``). ``suite=True`` in ``argparse_kw`` marks a
    setting a suite may set: its flag then defaults to None, meaning "not given"."""
    suite = argparse_kw.pop("suite", False)
    metadata = {"help": help, "flag": flag, "parse": parse, "suite": suite, "argparse": argparse_kw}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What `load_model` opens, and how our decoders' passes run on it."""

    model: str = setting(
        MISSING, "checkpoint directory, hub id, .gguf file, 'default', 'default-base', 'smollm2-sdsat'"
    )
    device: str = setting("cpu", "cpu | cuda")
    dtype: str = setting(
        "fp32", "fp32 | fp16 | bf16 | fp64 (fp64: exactness checks only)", choices=("fp32", "fp16", "bf16", "fp64")
    )
    adaptive_tokens: str | None = setting(
        None,
        "adaptive token id per offset, e.g. 32011,32011,32011 or 32011*5 (overrides the checkpoint)",
        metavar="ID[,ID...]",
    )
    engine: str = setting(
        "auto",
        "forward passes of ar/sdsat/sdsat-fused: auto (compile on CUDA, eager on CPU) | eager (dynamic KV cache) | "
        "static (pre-allocated KV cache) | compile (static + torch.compile; CUDA graphs on a GPU)",
        choices=ENGINE_CHOICES,
    )
    attn_implementation: str = setting(
        "sdpa",
        "transformers' attention: sdpa | eager (matmul + softmax; fused by --engine compile)",
        choices=("sdpa", "eager"),
    )

    @property
    def model_spec(self) -> ModelSpec:
        """Only the model's fields (a run or decode configuration carries them among its own)."""
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelSpec)})


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """What `run` and `decode` share of how tokens are generated."""

    top_p: float = setting(0.95, "nucleus mass when sampling (greedy records carry 1.0)", suite=True)
    top_k: int = setting(0, "top-k when sampling, 0 = off")
    max_new_tokens: int = setting(256, "new tokens at most per generation", suite=True)
    seed: int = setting(0, "seed of every sampled generation (each unit's own is derived from it)")
    groups: str = setting(
        "all", "sdsat-fused's group policy: all | acceptance lengths, e.g. 0,1,2", parse=str, suite=True
    )
    draft_model: str | None = setting(
        None, "draft model of sps and hf-assisted (e.g. default-draft)", parse=lambda v: v, suite=True
    )
    window: int = setting(
        LOOKAHEAD_WINDOW, "lookahead's window W: future positions a Jacobi iteration guesses", suite=True
    )
    guesses: int = setting(LOOKAHEAD_GUESSES, "lookahead's guess set G: n-gram candidates verified a loop", suite=True)
    drafter: str | None = setting(
        None,
        "a trained drafter: medusa's heads or eagle's layer (its directory), a training work directory "
        "holding one per decoder (W/medusa, W/eagle), or default-base-drafters (shipped, for default-base)",
        parse=lambda v: v,
        suite=True,
    )


@dataclass(frozen=True, kw_only=True)
class RunConfig(GenerationSettings, ModelSpec):
    """One `run`: tasks x decoders x k x sampling, and how its records are judged."""

    tasks: tuple[str, ...]
    decoders: tuple[str, ...] = setting(("ar", "sdsat"), "comma-separated decoders", parse=_items(str), suite=True)
    ks: tuple[int, ...] = setting(
        (0, 1, 3, 5, 7),
        "comma-separated draft lengths (sdsat, sdsat-fused, pld, lookahead)",
        flag="k",
        parse=_items(int),
        suite=True,
    )
    temperatures: tuple[float, ...] = setting(
        (0.0,), "comma-separated temperatures, 0 = greedy", flag="temperature", parse=_items(float), suite=True
    )
    accepts: tuple[str, ...] = setting(
        ("exact",), "comma-separated acceptance rules for sampling", flag="accept", parse=_items(str), suite=True
    )
    n_samples: int = setting(1, "samples per problem at temperature > 0", suite=True)
    repeats: int = setting(
        1, "time each generation N times and keep the median-time one, robust to a busy machine", suite=True
    )
    limit: int | None = setting(None, "first N problems of each task", parse=_optional_int, suite=True)
    data_dir: str | None = setting(None, "local evaluation data (default: $SDSAT_DATA_DIR)")
    fim_order: str = "psm"
    allow_code_execution: bool = setting(False, "execute completions (in the sandbox)")
    isolation: str | None = setting(
        None,
        "sandbox of executed programs (default: bubblewrap, else unshare as root; rlimits, which is no sandbox, "
        "only when named here)",
        choices=("bubblewrap", "unshare", "rlimits"),
    )
    skip_unavailable: bool = setting(
        False,
        "with --allow-code-execution: go on when a task's toolchain is missing; its records are left out of pass@k "
        "and counted as unavailable (default: stop before generating)",
    )

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


@dataclass(frozen=True, kw_only=True)
class DecodeConfig(GenerationSettings, ModelSpec):
    """One `decode`: a prompt through one decoder."""

    decoder: str = setting(
        "sdsat", "ar | sdsat | sdsat-fused | pld | lookahead | sps | medusa | eagle | hf | hf-pld | hf-assisted"
    )
    k: int = setting(
        5, "draft length: adaptive tokens per loop (sdsat; 0 = plain AR), pld's longest draft, lookahead's N - 1"
    )
    temperature: float = setting(0.0, "0 = greedy")
    accept: str = setting("exact", "sampling acceptance rule: exact | paper")
    tree: str | None = setting(None, "draft tree for sampling: default | chain | JSON list of paths")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """One `probe`: decode cost at a model shape on this card."""

    shape: str = setting(MISSING, "codellama-7b | codellama-13b | a Llama config.json")
    variant: str = setting(
        "all-accept",
        "all-accept (every draft accepted, each decoder's ceiling) | random | both (OUT/<variant>)",
        choices=("all-accept", "random", "both"),
    )
    engines: tuple[str, ...] = setting(("eager", "compile"), "comma-separated engines to measure", parse=_items(str))
    dtype: str = setting("bf16", "bf16 | fp16 | fp32", choices=("bf16", "fp16", "fp32"))
    device: str = setting("cuda", "cuda | cpu")
    decoders: tuple[str, ...] = setting(
        ("sdsat", "sdsat-fused"),
        "comma-separated speculative decoders beside ar: sdsat, sdsat-fused, and the trained peers medusa and "
        "eagle, whose synthetic drafters (zero heads, a pass-through layer) cost what trained ones do",
        parse=_items(str),
    )
    ks: tuple[int, ...] = setting((3, 5, 7), "draft lengths of the speculative decoders", flag="k", parse=_items(int))
    blocks: tuple[int, ...] = setting((1, 2, 4, 8, 16, 32, 64, 128), "block sizes of the cost curve", parse=_items(int))
    repeats: int = setting(10, "timed repeats of each measurement (their median is kept)")
    projections: str = setting(
        "fused",
        "fused (one matrix for q/k/v and one for gate/up on a GPU, as runs use) | separate (the shape's "
        "own matrices: the baseline the fusion is measured against)",
        choices=("fused", "separate"),
    )
    attn_implementation: str = setting(
        "sdpa",
        "transformers' attention, as a run's --attn-implementation: sdpa | eager (matmul + softmax, fused "
        "by the compile engine)",
        choices=("sdpa", "eager"),
    )


DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.name not in ("model", "tasks")}
_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str, "float | None": float}


def _dest(f) -> str:
    """The argparse name of a field's flag (``--k`` for ``ks``, ``--top-p`` for ``top_p``)."""
    return f.metadata["flag"] or f.name


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_of(f) -> Callable:
    return f.metadata["parse"] or _TYPES[f.type]


# The settings a suite may set and a `run` flag overrides: (flag / suite key, RunConfig field, parser).
SETTINGS: tuple[tuple[str, str, Callable], ...] = tuple(
    (_dest(f), f.name, _parser_of(f)) for f in fields(RunConfig) if f.metadata.get("suite")
)
SUITE_KEYS = {"name", "tasks", "data_tasks", "models", *(key for key, _, _ in SETTINGS)}


def flag_text(value) -> str:
    """A default as a flag would write it (for --help)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_flags(parser: argparse.ArgumentParser, cls, only=None, required=(), suites: bool = False) -> None:
    """A flag for every field of ``cls`` that has one (or for the fields in ``only``). With ``suites`` the settings a
    suite may set default to None ("not given": :func:`settings` resolves them), else to the field's
    default, parsed as the flag's text is; ``required`` fields must be given."""
    for f in fields(cls):
        meta = f.metadata
        if "help" not in meta or (only is not None and f.name not in only):
            continue
        flag = _flag(_dest(f))
        default = None if f.default is MISSING else f.default
        shown = "" if default is None or default is False else f" (default {flag_text(default)})"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif suites and meta["suite"]:  # text, parsed by settings() with the suite's values
            parser.add_argument(flag, help=meta["help"] + shown, **meta["argparse"])
        else:
            kw = {"type": _parser_of(f), "default": default, **meta["argparse"]}
            parser.add_argument(flag, required=f.name in required, help=meta["help"] + shown, **kw)


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
            raise HarnessError(f"{_flag(key)}: malformed value '{value}'") from None
    return chosen


def values(args: argparse.Namespace, cls, skip=()) -> dict:
    """The fields of ``cls`` that ``args`` holds flags for (under the flag's name), but ``skip``."""
    out = {}
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        out[f.name] = getattr(args, _dest(f))
    return out
