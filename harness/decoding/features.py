"""The base model's last hidden states beside its logits, and the loop of the decoders that draft from
them (Medusa heads, an EAGLE layer). One wrapper module returns ``[logits, hidden]`` concatenated on
the last axis as its ``logits``, so that our engine (static cache, compiled step, CUDA graphs) runs it
unchanged and every pass of such a decoder costs what an ``ar`` pass costs plus the copy of its hidden
rows.

The loop (:func:`feature_drafting_loop`) is one pass a loop, as ``sdsat-fused``'s: ``[pending,
candidates]`` under a tree mask, the candidates being the top-ranked tokens of the drafter's (depth,
vocab) logits (a chain of top-1 tokens for greedy decoding, a tree shape for sampling); verification
as the other drafters' (greedy walk, or the exact walk when sampling: the candidates are
deterministic given the text, so the output is distributed as ``ar``'s). The drafter then reads the
hidden states of the accepted path (pending and the accepted nodes) with the token that followed each,
and drafts the tokens after the bonus token. The first loop, with nothing drafted yet, feeds the
pending token alone."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness import engine as engines
from harness import weights
from harness.decoding.base import Generation
from harness.decoding.fused import ROOT_ONLY
from harness.decoding.sdsat import tree_tokens, walk_tree
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

# A trained drafter's directory (``--drafter``): its settings and its weights.
CONFIG = "drafter.json"
WEIGHTS = "drafter.safetensors"


class WithHidden(nn.Module):
    """A causal LM whose output's ``logits`` are its logits followed by its final hidden states."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, input_ids, position_ids, past_key_values, attention_mask, use_cache=True, logits_to_keep=0):
        hidden = self.model.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            use_cache=use_cache,
        ).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.get_output_embeddings()(hidden)
        return CausalLMOutputWithPast(logits=torch.cat([logits, hidden.to(logits.dtype)], dim=-1))


_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def with_hidden(lm: LoadedModel) -> LoadedModel:
    """``lm`` with hidden states in its passes: the same weights, on an engine of its own of the same
    mode (one per model, shared by every decoder that reads hidden states)."""
    hit = _WRAPPED.get(lm.model)
    if hit is None or hit.engine.mode != lm.engine.mode:
        wrapper = WithHidden(lm.model)
        hit = replace(lm, model=wrapper, engine=engines.DecodeEngine(wrapper, lm.engine.mode, lm.engine.backend))
        _WRAPPED[lm.model] = hit
    return hit


def vocabulary(lm: LoadedModel) -> int:
    """The width of the logits (``with_hidden``'s outputs hold the hidden states after them)."""
    model = lm.model.model if isinstance(lm.model, WithHidden) else lm.model
    return model.get_output_embeddings().weight.shape[0]


class FeatureDrafter(Protocol):
    # Prompt positions whose hidden states the drafter reads: 1 (the last) or 0 (all).
    prompt_positions: int

    def begin(self, prompt_hidden: torch.Tensor | None, prompt_ids: list[int]) -> None:
        """A new generation: the prompt's hidden states (all but its last token's) and its ids."""

    def propose(self, hidden: torch.Tensor, next_tokens: list[int], depth: int) -> torch.Tensor:
        """(depth, vocab) logits of the ``depth`` tokens after the last of ``next_tokens``, from the
        accepted path's hidden states (m, hidden) and the token that followed each."""


def feature_drafting_loop(s: DecodeSession, tree: DraftTree, drafter: FeatureDrafter) -> Generation:
    """Decode ``s`` to its end with drafts from ``drafter`` (see the module's docstring)."""
    vocab = vocabulary(s.lm)
    prompt = s.prefill(keep=drafter.prompt_positions)
    draft_logits: torch.Tensor | None = None
    with s.decoding() as t:
        # the drafter's reading of the prompt is part of what it costs: timed as decoding, as sps's is
        drafter.begin(None if prompt is None else prompt[:, vocab:], s.prompt_ids)
        while not s.done:
            block = tree if draft_logits is not None else ROOT_ONLY
            tokens = tree_tokens(block, s.pending, draft_logits)
            prefix = s.cache_length
            out = s.forward(tokens, prefix + block.node_depth, block.ancestor_mask)
            path, bonus = walk_tree(s, block, tokens, out[:, :vocab], "exact")
            s.keep(prefix, [0, *path])
            kept = s.emit([tokens[n] for n in path] + [bonus])
            s.pending = bonus
            s.record(drafted=block.depth, accepted=min(len(path), kept), emitted=kept, forwards=1)
            if not s.done:
                accepted = [0, *path]
                next_tokens = [tokens[n] for n in path] + [bonus]
                draft_logits = drafter.propose(out[accepted, vocab:], next_tokens, tree.depth)
    return s.result(t)


def save_drafter(drafter: nn.Module, directory: Path, config: dict) -> None:
    """``drafter``'s weights and ``config`` (its ``kind``, ``hidden`` size and shape) as a ``--drafter``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in drafter.state_dict().items()}, directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps(config))


def read_drafter_config(directory: str | Path, kind: str) -> tuple[Path, dict]:
    """The directory of the drafter of ``kind`` (``directory`` itself or its ``kind`` folder) and its
    settings, checked to be that kind's."""
    directory = weights.resolve_drafter(directory)
    if not (directory / CONFIG).exists() and (directory / kind / CONFIG).exists():
        directory = directory / kind
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"drafter {directory}: no readable {CONFIG} ({type(exc).__name__})") from None
    if not isinstance(config, dict) or config.get("kind") != kind:
        found = config.get("kind") if isinstance(config, dict) else None
        raise HarnessError(f"drafter {directory}: a '{found}' drafter, not a '{kind}' one")
    return directory, config


def load_drafter(directory: str | Path, kind: str, lm: LoadedModel, build: Callable[[dict], nn.Module]) -> nn.Module:
    """The drafter of ``kind`` saved in ``directory`` (built from its config by ``build``), checked against
    ``lm``'s hidden size, on ``lm``'s device and dtype. ``directory`` is the drafter's own, or a training
    work directory that holds one per decoder (``W/medusa``, ``W/eagle``), so that one ``--drafter``
    serves a run of both."""
    directory, config = read_drafter_config(directory, kind)
    hidden = lm.model.config.hidden_size
    if config["hidden"] != hidden:
        raise HarnessError(
            f"drafter {directory}: a drafter of hidden size {config['hidden']}, model '{lm.name}' has {hidden}"
        )
    drafter = build(config)
    drafter.load_state_dict(load_file(directory / WEIGHTS))
    return drafter.to(lm.device, lm.dtype).eval()


def drafting_trees(tree: str | None, k: int) -> dict[bool, DraftTree]:
    """The candidates' shape, greedy (a chain of k) or sampling (``--tree``, default SDSAT's)."""
    try:
        return {True: DraftTree.parse("chain", k), False: DraftTree.parse(tree, k)}
    except ValueError as exc:
        raise HarnessError(f"draft tree: {exc}") from None
