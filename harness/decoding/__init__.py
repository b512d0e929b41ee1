"""Decoders behind one interface (see base.Decoder); ``make_decoder`` builds one by name."""

from __future__ import annotations

from harness.decoding.autoregressive import AutoregressiveDecoder
from harness.decoding.base import Decoder, Generation, SamplingParams, Stats, StopCondition
from harness.decoding.fused import FusedSdsatDecoder
from harness.decoding.peers import HfGenerateDecoder
from harness.decoding.sdsat import SdsatDecoder
from harness.errors import HarnessError
from harness.models import LoadedModel

DECODERS = ("ar", "sdsat", "sdsat-fused", "hf", "hf-pld", "hf-assisted")
PLD_DEFAULT_TOKENS = 10


def make_decoder(
    name: str,
    lm: LoadedModel,
    k: int = 0,
    accept: str = "exact",
    tree: str | None = None,
    draft: LoadedModel | None = None,
    groups: str | None = None,
) -> Decoder:
    if name == "ar":
        return AutoregressiveDecoder(lm)
    if name == "sdsat":
        return SdsatDecoder(lm, k, accept=accept, tree=tree)
    if name == "sdsat-fused":
        return FusedSdsatDecoder(lm, k, accept=accept, tree=tree, groups=groups)
    if name == "hf":
        return HfGenerateDecoder(lm, "hf")
    if name == "hf-pld":
        return HfGenerateDecoder(lm, "hf-pld", prompt_lookup_num_tokens=k or PLD_DEFAULT_TOKENS)
    if name == "hf-assisted":
        if draft is None:
            raise HarnessError("decoder 'hf-assisted' needs a draft model: pass --draft-model (e.g. default-draft)")
        return HfGenerateDecoder(lm, "hf-assisted", assistant=draft)
    raise HarnessError(f"unknown decoder '{name}' (choose from {', '.join(DECODERS)})")


__all__ = ["DECODERS", "Decoder", "Generation", "SamplingParams", "Stats", "StopCondition", "make_decoder"]
