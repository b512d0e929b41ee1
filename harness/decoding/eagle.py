"""``eagle``: an EAGLE-style feature-level drafter on a frozen base (Li et al. 2024) on our engine.

The drafter is one Llama decoder layer over ``fc([f_t, e(x_{t+1})])``: from the base's last hidden
state (its *feature*) at position t and the embedding of the token that followed, it predicts the
base's feature at t + 1, which the base's own frozen LM head turns into the distribution of the token
at t + 2. Drafting runs it autoregressively on its own features: k drafts cost k passes of one layer.
Its embedding and LM head are the base's (shared and frozen, as in EAGLE); what it adds is the fc and
the layer. Differences from the paper's code, recorded here: the layer keeps its input norm and a
final norm (EAGLE-1 drops both), the drafts of a sampling tree are the top-ranked tokens of each depth
along the drafter's top-1 chain (EAGLE-1 expands a tree of the drafter's own top tokens), and training
adds no feature noise.

Each loop is one base pass of the loop shared with ``medusa`` (``features.feature_drafting_loop``).
The drafter keeps a KV cache of its own, one entry per base position whose (feature, next token) pair
it has read: after a loop it reads the accepted path's pairs in one pass (committed), then drafts
beyond the bonus token on its own features, which it drops again (the next loop has the base's). Its
passes run on an engine of their own, of the base's mode (static cache, compiled step, CUDA graphs):
the features a pass reads are copied into a buffer at a fixed address that the captured graph reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness import engine as engines
from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.features import (
    drafting_trees,
    feature_drafting_loop,
    load_drafter,
    save_drafter,
    vocabulary,
    with_hidden,
)
from harness.decoding.session import DecodeSession
from harness.errors import HarnessError
from harness.models import LoadedModel


def layer_config(base: object) -> LlamaConfig:
    """The drafter layer's shape: the base's width, heads and feed-forward size (a GPT-2 base's 4x
    width where it names none), one layer, no vocabulary of its own."""
    hidden = base.hidden_size
    heads = base.num_attention_heads
    return LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=getattr(base, "num_key_value_heads", None) or heads,
        head_dim=getattr(base, "head_dim", None) or hidden // heads,
        intermediate_size=getattr(base, "intermediate_size", None) or 4 * hidden,
        max_position_embeddings=base.max_position_embeddings,
        rms_norm_eps=getattr(base, "rms_norm_eps", None) or 1e-6,
        num_hidden_layers=1,
        vocab_size=1,  # inputs come as embeddings: the base's
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


class EagleLayer(nn.Module):
    """``fc([feature, next-token embedding])`` through one decoder layer: the predicted next feature."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.body = LlamaModel(config)

    @property
    def config(self) -> LlamaConfig:
        return self.body.config

    def forward(
        self, features, embeddings, position_ids=None, past_key_values=None, attention_mask=None, use_cache=False
    ) -> torch.Tensor:
        x = self.fc(torch.cat([features, embeddings.to(features.dtype)], dim=-1))
        return self.body(
            inputs_embeds=x,
            position_ids=position_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            use_cache=use_cache,
        ).last_hidden_state

    @classmethod
    def pass_through(cls, config: LlamaConfig) -> EagleLayer:
        """A layer that passes the feature through (fc = [I, 0], its output projections zero), so that
        it drafts the base's next-token prediction again, at the cost of a real layer: every draft right
        on a model whose predictions do not depend on the context (the tests' and the probe's)."""
        layer = cls(config)
        with torch.no_grad():
            hidden = config.hidden_size
            layer.fc.weight.zero_()
            layer.fc.bias.zero_()
            layer.fc.weight[:, :hidden] = torch.eye(hidden)
            block = layer.body.layers[0]
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        return layer

    def save(self, directory: Path, base: str) -> None:
        config = {"kind": "eagle", "hidden": self.config.hidden_size, "layer": self.config.to_diff_dict(), "base": base}
        save_drafter(self, directory, config)


def load_layer(directory: str | Path, lm: LoadedModel) -> EagleLayer:
    """An EAGLE layer saved by :meth:`EagleLayer.save`, checked against ``lm``'s hidden size."""
    shape = layer_config(lm.model.config).to_dict()
    return load_drafter(directory, "eagle", lm, lambda config: EagleLayer(LlamaConfig(**{**shape, **config["layer"]})))


class EagleStep(nn.Module):
    """The drafter as our engine runs a model: ``input_ids`` are the tokens that followed the features
    in ``features`` (filled by :meth:`feed` before each pass); its ``logits`` are the base LM head's
    over the predicted features, followed by the features themselves (as ``with_hidden``'s)."""

    def __init__(self, layer: EagleLayer, base: nn.Module, block: int):
        super().__init__()
        self.layer = layer
        self.embed = base.get_input_embeddings()
        self.lm_head = base.get_output_embeddings()
        hidden = layer.config.hidden_size
        self.register_buffer("features", torch.zeros(1, block, hidden, dtype=layer.fc.weight.dtype), persistent=False)
        self.wide: torch.Tensor | None = None  # a prompt's features, longer than the buffer (eager prefill)

    @property
    def config(self) -> LlamaConfig:
        return self.layer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.layer.fc.weight.dtype

    def feed(self, features: torch.Tensor) -> None:
        """The (m, hidden) features of the next pass: into the fixed buffer when they fit (a captured
        graph reads it there), else held as they are for the one eager prefill pass."""
        m = features.shape[0]
        if m <= self.features.shape[1]:
            self.features[0, :m].copy_(features)
            self.wide = None
        else:
            self.wide = features[None].to(self.dtype)

    def forward(self, input_ids, position_ids, past_key_values, attention_mask, use_cache=True, logits_to_keep=0):
        q, room = input_ids.shape[1], self.features.shape[1]
        if self.wide is not None:
            features = self.wide
        elif q <= room:
            features = self.features[:, :q]
        else:  # the engine's warm-up prefill, of dummy ids, unfed
            features = self.features.new_zeros(1, q, self.features.shape[2])
        hidden = self.layer(features, self.embed(input_ids), position_ids, past_key_values, attention_mask, use_cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        return CausalLMOutputWithPast(logits=torch.cat([logits, hidden.to(logits.dtype)], dim=-1))


class EagleDecoder:
    name = "eagle"
    prompt_positions = 0  # the drafter reads every prompt position's feature

    def __init__(self, lm: LoadedModel, layer: EagleLayer, k: int, tree: str | None = None):
        if k < 1:
            raise HarnessError(f"eagle needs k >= 1 (draft tokens a loop), got {k}")
        self.lm, self.k = with_hidden(lm), k
        self.trees = drafting_trees(tree, k)
        step = EagleStep(layer, lm.model, block=k + 1).to(lm.device)
        # the drafter as a model of its own (``draft``: its engine is warmed up and reserved as sps's is)
        self.draft = replace(
            lm,
            name=f"{lm.name}+eagle",
            model=step,
            engine=engines.DecodeEngine(step, lm.engine.mode, lm.engine.backend),
        )
        self.vocab = vocabulary(lm)
        self.cache = None

    @property
    def configuration(self) -> str:
        return f"{self.lm.engine.description}; EAGLE layer (one decoder layer, the base's embedding and LM head shared)"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        return (1, self.trees[greedy].size + 1)

    def draft_block_sizes(self) -> tuple[int, ...]:
        """The drafter's passes: an accepted path's pairs (1..k+1), then one token a draft."""
        return tuple(range(1, self.k + 2))

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        tree = self.trees[sampling.greedy]
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=tree.size + 1)
        self.cache = self.draft.engine.new_cache(len(prompt_ids) + stop.max_new_tokens + self.k + 2)
        return feature_drafting_loop(s, tree, self)

    def begin(self, prompt_hidden: torch.Tensor | None, prompt_ids: list[int]) -> None:
        """Read the prompt's (feature, next token) pairs: every position but the last, whose feature the
        first loop's pass makes."""
        if prompt_hidden is not None:
            self._pass(prompt_hidden, self._ids(prompt_ids[1:]), prefill=True)

    def propose(self, hidden: torch.Tensor, next_tokens: list[int], depth: int) -> torch.Tensor:
        """Commit the accepted path's pairs, then draft ``depth`` tokens on the drafter's own features.
        Each draft's token stays on the device (no host round trip between the drafter's passes)."""
        logits, feature = self._pass(hidden, self._ids(next_tokens))
        committed = self.cache.length
        rows = [logits]
        for _ in range(depth - 1):
            logits, feature = self._pass(feature[None], torch.argmax(logits).view(1, 1))
            rows.append(logits)
        self.cache.crop(committed)
        return torch.stack(rows)

    def _ids(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor([tokens], dtype=torch.long, device=self.lm.device)

    @torch.no_grad()
    def _pass(self, features: torch.Tensor, ids: torch.Tensor, prefill: bool = False):
        """One drafter pass over (feature, token) pairs (``ids``: 1 x m) at the next positions: its last
        position's logits and predicted feature."""
        self.draft.model.feed(features)
        start, m = self.cache.length, ids.shape[1]
        positions = torch.arange(start, start + m, device=self.lm.device)[None]
        out = self.draft.engine.forward(self.cache, ids, positions, logits_to_keep=1 if prefill else 0, prefill=prefill)
        self.draft.model.wide = None
        return out[-1, : self.vocab], out[-1, self.vocab :]
