"""External reference decoders through transformers' ``model.generate``: ``hf`` (plain generation),
``hf-pld`` (prompt-lookup decoding, a training-free speculative peer) and ``hf-assisted`` (classic
speculative decoding with a separate draft model, transformers' assisted generation).

Their internals are transformers', so the statistics that can be measured from outside are reported:
forward passes of the target model are counted with a forward hook (the draft model's are not), and
the end of the first one (the prefill, which in assisted generation also verifies the first drafts)
splits prefill_s from decode_s, as our decoders' timers do.

They stop where ours stop: a stopping criterion feeds each step's new tokens to our
:class:`~harness.decoding.base.TokenSink`. transformers' own ``StopStringCriteria`` only looks at the
end of the sequence, so an assisted step that accepts a stop string and tokens after it was not
stopped, and ``hf-pld`` ran on to ``max_new_tokens`` (up to 48 passes for a kept completion of 2 tokens;
its speedups measured before 2026-12-02 were low for that reason).

Each peer runs at the fastest configuration transformers supports for its method, as our decoders run
at theirs: where our engine compiles (``--engine compile``, what ``auto`` picks on a GPU), ``hf`` decodes
with a static cache, which makes transformers compile its decode step (CUDA graphs); assisted generation
(``hf-pld``, ``hf-assisted``) must roll its cache back, and transformers refuses static caches there
("assisted generate is not supported with Static cache classes"), so those two run with a dynamic cache,
eagerly. :attr:`HfGenerateDecoder.configuration` says which, and every record carries it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import StaticCache, StoppingCriteria, StoppingCriteriaList

from harness.decoding.base import (
    Generation,
    SamplingParams,
    Stats,
    StopCondition,
    TokenSink,
    check_room,
    check_same_vocabulary,
)
from harness.device import Timer, synchronize
from harness.engine import attention_kernels, static_capacity
from harness.errors import HarnessError
from harness.models import LoadedModel


class SinkCriteria(StoppingCriteria):
    """Stops transformers' generate once our sink would: at a stop string anywhere in a step's tokens.

    The sink is fed each call's new tokens only, so its stop check stays bounded. Some releases (5.17)
    also call the criteria on a step's drafted sequence before verifying it; drafts that verification
    rejects must not stay in the sink (they would count towards max_new_tokens and end generation
    early), so a call whose sequence does not extend the previous call's resumes from the sink as it
    was before that call, or, failing that, from an empty one."""

    def __init__(self, sink: TokenSink):
        self.prompt_length = len(sink.prompt_ids)
        self.sink = sink
        self.fed: list[int] = []  # the completion as the last call saw it
        self._empty = sink.fork()
        self._before = (self._empty, self.fed)  # the sink and its completion before the last call

    def _resume_point(self, tokens: list[int]) -> tuple[TokenSink, list[int]]:
        for sink, fed in ((self.sink, self.fed), self._before):
            if tokens[: len(fed)] == fed:
                return sink, fed
        return self._empty.fork(), []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tokens = input_ids[0, self.prompt_length :].tolist()
        sink, fed = self._resume_point(tokens)
        self._before = (sink.fork(), fed)
        sink.emit(tokens[len(fed) :])
        self.sink, self.fed = sink, tokens
        return torch.full((input_ids.shape[0],), sink.done, dtype=torch.bool, device=input_ids.device)


class _PrefillClock:
    """A forward hook that notes when the target model's first pass (the prefill) has finished."""

    def __init__(self, device: torch.device):
        self.device = device
        self.passes = 0
        self.prefill_end: float | None = None

    def __call__(self, *_) -> None:
        self.passes += 1
        if self.prefill_end is None:
            synchronize(self.device)
            self.prefill_end = time.perf_counter()


class HfGenerateDecoder:
    def __init__(
        self,
        lm: LoadedModel,
        name: str = "hf",
        prompt_lookup_num_tokens: int | None = None,
        assistant: LoadedModel | None = None,
    ):
        if assistant is not None:
            check_same_vocabulary(assistant, lm)
        self.lm = lm
        self.name = name
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.assistant = assistant
        assisted = assistant is not None or bool(prompt_lookup_num_tokens)
        self.static_cache = lm.engine.mode == "compile" and not assisted
        self._cache: StaticCache | None = None
        self._capacity = 0

    @property
    def configuration(self) -> str:
        lookup = f"; prompt lookup of {self.prompt_lookup_num_tokens} tokens" if self.prompt_lookup_num_tokens else ""
        if self.static_cache:  # transformers compiles a static-cache step on a GPU only
            compiled = "compiled by transformers" if self.lm.device.type == "cuda" else "eager"
            return f"transformers generate: static cache, {compiled}"
        return (
            "transformers generate: dynamic cache, eager"
            + ("" if self.lm.engine.mode != "compile" else " (assisted generation takes no static cache)")
            + lookup
        )

    def _static_cache(self, needed: int) -> StaticCache:
        """One cache for every call, as large as our engine's reservation for the run (in its capacity
        steps), so that transformers' compiled step sees the same shapes from prompt to prompt (a cache
        sized per call would recompile inside timed generations)."""
        needed = max(needed, self.lm.engine.capacity)
        if self._cache is None or self._capacity < needed:
            self._capacity = static_capacity(needed)
            self._cache = StaticCache(config=self.lm.model.config, max_cache_len=self._capacity)
        with torch.inference_mode():  # generate made its tensors inference tensors
            self._cache.reset()
        return self._cache

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """None of our engine's: transformers' generate runs these passes."""
        return ()

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        if len(prompt_ids) == 0:
            raise HarnessError("empty prompt: at least one token is needed to decode from")
        if stop.max_new_tokens < 1:
            raise HarnessError("max_new_tokens must be at least 1")
        check_room(self.lm.model.config, len(prompt_ids), stop.max_new_tokens)
        model = self.lm.model
        ids = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=self.lm.device)
        kwargs = dict(
            max_new_tokens=stop.max_new_tokens,
            do_sample=not sampling.greedy,
            eos_token_id=sorted(stop.eos_token_ids) or None,
            pad_token_id=self.lm.tokenizer.pad_token_id or self.lm.tokenizer.eos_token_id,
            attention_mask=torch.ones_like(ids),
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
            torch.manual_seed(sampling.seed)
        if stop.stop_strings:
            # A criteria object rather than ``stop_strings``: assisted generation would hand the strings
            # to the draft model's own generate call, which has no tokenizer.
            sink = TokenSink(self.lm.tokenizer, prompt_ids, stop)
            kwargs["stopping_criteria"] = StoppingCriteriaList([SinkCriteria(sink)])
        if self.prompt_lookup_num_tokens:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
        if self.assistant is not None:
            kwargs["assistant_model"] = self.assistant.model
        if self.static_cache:
            kwargs["past_key_values"] = self._static_cache(len(prompt_ids) + stop.max_new_tokens)
        clock = _PrefillClock(self.lm.device)
        hook = model.register_forward_hook(clock)
        try:
            with attention_kernels(self.lm.device), torch.inference_mode(), Timer(self.lm.device) as t:
                out = model.generate(ids, **kwargs)
        finally:
            hook.remove()
        sink = TokenSink(self.lm.tokenizer, prompt_ids, stop)
        sink.emit(out[0, ids.shape[1] :].tolist())
        if not sink.done:  # generate ended where our stop rules do not: its record would be mislabelled
            raise HarnessError(
                f"{self.name}: transformers' generate stopped after {len(sink.tokens)} of {stop.max_new_tokens} "
                "new tokens without an eos token or a stop string"
            )
        prefill_s = (clock.prefill_end or t.start + t.seconds) - t.start
        stats = Stats(
            prefill_s=prefill_s,
            decode_s=t.seconds - prefill_s,
            # generate's prefill is not timed apart on the CPU clock: its share of the wall time stands for it
            decode_cpu_s=t.cpu_seconds * (t.seconds - prefill_s) / t.seconds if t.seconds > 0 else None,
            prefill_passes=1,
            forward_passes=max(0, clock.passes - 1),
            loops_observed=False,
        )
        stats.new_tokens = len(sink.tokens)  # drafted/accepted are transformers' internals: unknown, not 0
        return Generation(list(sink.tokens), sink.text, sink.stop_reason, stats)
