"""Load a causal LM and its tokenizer, and describe what SDSAT needs from a checkpoint:
the adaptive tokens (ids per offset, maximum k) and the fill-in-the-middle tokens.

A checkpoint trained by our recipe carries an ``sdsat`` entry in its config.json::

    "sdsat": {"adaptive_token_ids": [id_1, ..., id_K], "max_k": K}

(one id repeated, as in the public CodeLlama-SDSAT checkpoints, or distinct ids per offset).
Checkpoints without it get their ids from ``--adaptive-tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import engine as engines
from harness.config import ENGINE_CHOICES, ModelSpec
from harness.errors import HarnessError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
# CodeLlama's infilling tokens, then the names our recipe's tokenizer uses.
KNOWN_FIM_TOKENS = (
    ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_eot>"),
)


@dataclass(frozen=True)
class AdaptiveSpec:
    """Adaptive token id for each draft offset 1..max_k."""

    token_ids: tuple[int, ...]

    @property
    def max_k(self) -> int:
        return len(self.token_ids)

    def ids_for(self, k: int) -> list[int]:
        if k > self.max_k:
            raise HarnessError(f"k={k} is beyond the model's {self.max_k} adaptive tokens (max k = {self.max_k})")
        return list(self.token_ids[:k])

    def to_config(self) -> dict:
        return {"adaptive_token_ids": list(self.token_ids), "max_k": self.max_k}


@dataclass(frozen=True)
class FimSpec:
    prefix: str
    suffix: str
    middle: str
    end: str


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    adaptive: AdaptiveSpec | None
    fim: FimSpec | None
    device: torch.device
    dtype: torch.dtype
    engine: engines.DecodeEngine | None = None  # how our decoders run forward passes; eager if None

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = engines.DecodeEngine(self.model)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return frozenset(ids)

    def require_adaptive(self, k: int) -> list[int]:
        if self.adaptive is None:
            raise HarnessError(
                f"model '{self.name}' has no adaptive tokens: SDSAT decoding needs a checkpoint with an "
                "'sdsat' config entry or --adaptive-tokens ID[,ID...]"
            )
        return self.adaptive.ids_for(k)


def parse_adaptive_tokens(text: str, vocab_size: int) -> AdaptiveSpec:
    """'32011,32011,32011' or '32011*3' (one id repeated) or '100,101,102' (one id per offset)."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "*" in part:
                token, count = part.split("*")
                ids.extend([int(token)] * int(count))
            elif part:
                ids.append(int(part))
    except ValueError:
        raise HarnessError(f"--adaptive-tokens: expected comma-separated ids or ID*N, got '{text}'") from None
    if not ids:
        raise HarnessError("--adaptive-tokens: no ids given")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise HarnessError(f"--adaptive-tokens: id {bad[0]} is outside the vocabulary (size {vocab_size})")
    return AdaptiveSpec(tuple(ids))


def adaptive_from_config(config) -> AdaptiveSpec | None:
    entry = getattr(config, "sdsat", None)
    if not entry:
        return None
    return AdaptiveSpec(tuple(int(i) for i in entry["adaptive_token_ids"]))


def fim_from_tokenizer(tokenizer) -> FimSpec | None:
    vocab = tokenizer.get_vocab()
    for names in KNOWN_FIM_TOKENS:
        if all(n in vocab for n in names):
            return FimSpec(*names)
    return None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is available on this machine")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise HarnessError(f"--device: expected cpu or cuda, got '{name}'")
    return torch.device(name)


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """The model ``spec`` names, on its device in its dtype, with its adaptive tokens, FIM tokens and
    decode engine (a plain name: every other setting at its default)."""
    from harness import weights

    if isinstance(spec, str):
        spec = ModelSpec(model=spec)
    device, dtype, engine = spec.device, spec.dtype, spec.engine
    if engine not in ENGINE_CHOICES:
        raise HarnessError(f"--engine: expected one of {', '.join(ENGINE_CHOICES)}, got '{engine}'")
    if dtype not in DTYPES:
        raise HarnessError(f"--dtype: expected one of {', '.join(DTYPES)}, got '{dtype}'")
    torch_device = resolve_device(device)
    if engine == "auto":  # compiled decode steps pay on a GPU; on a CPU compilation costs more than it saves
        engine = "compile" if torch_device.type == "cuda" else "eager"
    model, tokenizer = weights.open_model(weights.resolve(spec.model), DTYPES[dtype], spec.attn_implementation)
    model.to(torch_device).eval()
    if engine == "compile" and torch_device.type == "cuda":  # the speed path: one matrix for q/k/v, one for gate/up
        from harness.engine.fusion import fuse_projections

        fuse_projections(model)
    adaptive = (
        parse_adaptive_tokens(spec.adaptive_tokens, model.config.vocab_size)
        if spec.adaptive_tokens
        else adaptive_from_config(model.config)
    )
    return LoadedModel(
        name=spec.model,
        model=model,
        tokenizer=tokenizer,
        adaptive=adaptive,
        fim=fim_from_tokenizer(tokenizer),
        device=torch_device,
        dtype=DTYPES[dtype],
        engine=engines.DecodeEngine(model, engine),
    )
