"""Decoders behind one interface (see base.Decoder), each described once in ``REGISTRY``: its name,
how it is built, which draft lengths it takes and what it needs. The runner, the CLI and the report
ask the registry; adding a decoder is one entry here.

Importing the package loads no torch (the report and argument checks read the registry): the
decoders and the types of ``base`` load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.config import LOOKAHEAD_GUESSES, LOOKAHEAD_WINDOW
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.decoding.base import Decoder
    from harness.models import LoadedModel

_BASE_TYPES = ("Decoder", "Generation", "SamplingParams", "Stats", "StopCondition")


def __getattr__(name: str) -> Any:
    if name in _BASE_TYPES:
        return getattr(importlib.import_module("harness.decoding.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# hf-pld's lookup length everywhere (run and decode): transformers' documented default. --k is the
# adaptive-token draft length and does not apply to it; records name it in their configuration.
PLD_LOOKUP_TOKENS = 10


@dataclass(frozen=True)
class Options:
    """What a decoder may be built with; each takes the part it understands."""

    k: int = 0
    accept: str = "exact"  # the acceptance rule when sampling: exact | paper
    tree: str | None = None
    draft: LoadedModel | None = None
    groups: str | None = None
    window: int = LOOKAHEAD_WINDOW  # lookahead's W and G
    guesses: int = LOOKAHEAD_GUESSES
    drafter: str | None = None  # a trained drafter's directory (medusa's heads, eagle's layer)


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    build: Callable[[LoadedModel, Options], Decoder]
    # Draft lengths it runs at: "any" (k = 0 is plain AR through its own loop), "positive", or "none"
    # (it takes no k; hf-pld looks up PLD_LOOKUP_TOKENS).
    draft_lengths: str = "none"
    # Its drafts come from the model's adaptive tokens (it needs k of them; sampling takes an accept
    # rule, exact or the paper's); the other drafters take theirs from text and accept exactly.
    adaptive: bool = False
    needs_draft_model: bool = False
    # A control, not a decoder (``reference``): the dataset's reference solution scored as a completion
    # through the same prompt, assembly and sandbox, greedy only, where the data has one; nothing is built.
    control: bool = False
    # The largest k its trained drafter drafts, given the options (medusa: one token per head); None: any.
    reach: Callable[[Options], int | None] | None = None

    @property
    def takes_k(self) -> bool:
        """It runs at the draft lengths k of a run (``--k``)."""
        return self.draft_lengths != "none"

    def lengths(self, ks: tuple[int, ...], options: Options | None = None) -> tuple[int, ...]:
        """The k of ``ks`` it runs at; with ``options``, those within its drafter's reach."""
        if self.draft_lengths == "none":
            return (0,)
        ks = ks if self.draft_lengths == "any" else tuple(k for k in ks if k > 0)
        cap = self.reach(options) if self.reach is not None and options is not None else None
        return ks if cap is None else tuple(k for k in ks if k <= cap)


def decoder_options(cfg) -> dict:
    """The generation settings of a run or decode configuration that decoders are built with (each
    takes the part it understands)."""
    return {"groups": cfg.groups, "window": cfg.window, "guesses": cfg.guesses, "drafter": cfg.drafter}


def _ar(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.autoregressive import AutoregressiveDecoder

    return AutoregressiveDecoder(lm)


def _sdsat(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.sdsat import SdsatDecoder

    return SdsatDecoder(lm, o.k, accept=o.accept, tree=o.tree)


def _sdsat_fused(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.fused import FusedSdsatDecoder

    return FusedSdsatDecoder(lm, o.k, accept=o.accept, tree=o.tree, groups=o.groups)


def _pld(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.prompt_lookup import PromptLookupDecoder

    return PromptLookupDecoder(lm, o.k)


def _lookahead(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.lookahead import LookaheadDecoder

    return LookaheadDecoder(lm, o.k, o.window, o.guesses)


def _sps(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.draft_model import DraftModelDecoder

    if o.draft is None:
        raise missing_draft_model("sps")
    return DraftModelDecoder(lm, o.draft, o.k)


def _medusa(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.medusa import MedusaDecoder, load_heads

    if o.drafter is None:
        raise HarnessError("decoder 'medusa' needs its trained heads: pass --drafter DIR")
    return MedusaDecoder(lm, load_heads(o.drafter, lm), o.k, o.tree)


def _medusa_reach(o: Options) -> int | None:
    """Medusa drafts one token per trained head."""
    if o.drafter is None:
        return None  # building it says what is missing
    from harness.decoding.features import read_drafter_config

    return int(read_drafter_config(o.drafter, "medusa")[1]["heads"])


def _eagle(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.eagle import EagleDecoder, load_layer

    if o.drafter is None:
        raise HarnessError("decoder 'eagle' needs its trained layer: pass --drafter DIR")
    return EagleDecoder(lm, load_layer(o.drafter, lm), o.k, o.tree)


def _hf(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.peers import HfGenerateDecoder

    return HfGenerateDecoder(lm, "hf")


def _hf_pld(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.peers import HfGenerateDecoder

    return HfGenerateDecoder(lm, "hf-pld", prompt_lookup_num_tokens=PLD_LOOKUP_TOKENS)


def missing_draft_model(name: str) -> HarnessError:
    return HarnessError(f"decoder '{name}' needs a draft model: pass --draft-model (e.g. default-draft)")


def _hf_assisted(lm: LoadedModel, o: Options) -> Decoder:
    from harness.decoding.peers import HfGenerateDecoder

    if o.draft is None:
        raise missing_draft_model("hf-assisted")
    return HfGenerateDecoder(lm, "hf-assisted", assistant=o.draft)


def _control(lm: LoadedModel, o: Options) -> Decoder:
    raise HarnessError("a control is not a decoder: it has nothing to build")


REGISTRY: dict[str, DecoderSpec] = {
    spec.name: spec
    for spec in (
        DecoderSpec("ar", _ar),
        DecoderSpec("sdsat", _sdsat, "any", adaptive=True),
        DecoderSpec("sdsat-fused", _sdsat_fused, "positive", adaptive=True),
        DecoderSpec("pld", _pld, "positive"),
        DecoderSpec("lookahead", _lookahead, "positive"),
        DecoderSpec("sps", _sps, "positive", needs_draft_model=True),
        DecoderSpec("medusa", _medusa, "positive", reach=_medusa_reach),
        DecoderSpec("eagle", _eagle, "positive"),
        DecoderSpec("hf", _hf),
        DecoderSpec("hf-pld", _hf_pld),
        DecoderSpec("hf-assisted", _hf_assisted, needs_draft_model=True),
        DecoderSpec("reference", _control, control=True),
    )
}
DECODERS = tuple(name for name, spec in REGISTRY.items() if not spec.control)
CONTROLS = tuple(name for name, spec in REGISTRY.items() if spec.control)
DECODERS_WITH_K = tuple(name for name, spec in REGISTRY.items() if spec.takes_k)
ADAPTIVE_DECODERS = tuple(name for name, spec in REGISTRY.items() if spec.adaptive)


def decoder_spec(name: str) -> DecoderSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise HarnessError(f"unknown decoder '{name}' (choose from {', '.join(REGISTRY)})") from None


def reads_draft_model(decoders) -> bool:
    """Whether any of ``decoders`` drafts with a separate draft model (``--draft-model``): a suite names
    one for its sps row, and a run that leaves sps out neither loads nor reads it."""
    return any(decoder_spec(d).needs_draft_model for d in decoders)


def is_control(name: str) -> bool:
    """Whether records of ``name`` are a control (their pass@k checks the scoring, not a decoder)."""
    return name in CONTROLS


def configuration(decoder: Decoder, lm: LoadedModel, greedy: bool = True) -> str:
    """What ``decoder`` runs on, as records state it: the peers run inside transformers and say how
    (``configuration``); ours run on the model's engine. With CUDA graphs, the matrix library of each
    of the decoder's own pass widths, so every record of one decoder and k states the same."""
    text = getattr(decoder, "configuration", None) or lm.engine.description
    libraries = lm.engine.graph_libraries(decoder.block_sizes(greedy))
    return f"{text}; matrix library per block size: {libraries}" if libraries else text


def make_decoder(name: str, lm: LoadedModel, **options) -> Decoder:
    """Build decoder ``name`` on ``lm``; ``options`` are ``Options`` fields (k, accept, tree, draft, groups,
    window, guesses, drafter)."""
    return decoder_spec(name).build(lm, Options(**options))


__all__ = [
    "ADAPTIVE_DECODERS",
    "CONTROLS",
    "DECODERS",
    "DECODERS_WITH_K",
    "REGISTRY",
    "Decoder",
    "DecoderSpec",
    "Generation",
    "SamplingParams",
    "Stats",
    "StopCondition",
    "configuration",
    "decoder_spec",
    "is_control",
    "make_decoder",
    "missing_draft_model",
    "reads_draft_model",
]
