"""What a run decodes with, set up once: the model (with its decode engine), the hf-assisted draft
model, one decoder per (decoder, k, accept) the units need, every prompt's token ids, one static
cache reservation for the whole run, and each decoder's warm-up before its first timed record."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from harness.config import DecodeConfig, ModelSpec, RunConfig
from harness.decoding import (
    Decoder,
    DecoderSpec,
    Generation,
    Options,
    SamplingParams,
    Stats,
    StopCondition,
    decoder_options,
    decoder_spec,
    is_control,
    make_decoder,
    missing_draft_model,
    reads_draft_model,
)
from harness.device import keep_busy
from harness.errors import HarnessError
from harness.models import LoadedModel, load_model
from harness.prompting import encode, problem_stop, prompt_ids
from harness.results import WorkUnit

if TYPE_CHECKING:
    from harness.engine import DecodeEngine


def decoder_engines(decoder: Decoder, greedy: bool) -> list[tuple[DecodeEngine, tuple[int, ...]]]:
    """Every engine a decoder's passes run on, with their block sizes: its model's (for medusa, the
    model with hidden states), and a draft model's (sps)."""
    engines = [(decoder.lm.engine, decoder.block_sizes(greedy))]
    if hasattr(decoder, "draft_block_sizes"):
        engines.append((decoder.draft.engine, decoder.draft_block_sizes()))
    return engines


def warm_up(lm: LoadedModel, decoder: Decoder, temperature: float) -> None:
    """Compile the decoder's block sizes (engine ``compile``) and, on a GPU, run one short untimed
    generation at ``temperature`` (seed 0), so that kernel selection and the allocator warm up outside
    the timed records.

    Then two things that otherwise tax whichever decoder is timed after a compilation: the objects
    compilation left (graphs, guards, code: millions) are moved out of the garbage collector's sight,
    which would otherwise walk them on every full collection inside a timed generation; and the GPU,
    whose clocks fall while the host compiles, is kept busy until they are back up."""
    sampling = SamplingParams(temperature, seed=0)
    for engine, blocks in decoder_engines(decoder, sampling.greedy):
        engine.warm_up(blocks)
    if lm.device.type == "cuda":
        decoder.generate(encode(lm.tokenizer, "def warm_up(x):"), StopCondition(16), sampling)
        gc.collect()
        gc.freeze()
        keep_busy(lm.device, seconds=1.0)


def load_models(
    cfg: RunConfig | DecodeConfig, device: str, decoders: Sequence[str], ks: Sequence[int]
) -> tuple[LoadedModel, LoadedModel | None]:
    """The model and the hf-assisted draft model, checked against what ``decoders`` at ``ks`` need."""
    spec = replace(cfg.model_spec, device=device)
    lm, draft = load_model(spec), None
    needs = [decoder_spec(d) for d in decoders]
    if cfg.draft_model and reads_draft_model(decoders):
        # the model's device, dtype and attention; its own adaptive tokens, the default engine
        draft = load_model(replace(spec, model=cfg.draft_model, adaptive_tokens=None, engine=ModelSpec.engine))
    for need in needs:
        if need.needs_draft_model and draft is None:
            raise missing_draft_model(need.name)  # before anything is generated
    _say_reach(needs, tuple(ks), Options(**decoder_options(cfg)))
    if any(s.adaptive for s in needs):
        for k in ks:
            if k > 0:
                lm.require_adaptive(k)
    return lm, draft


def _say_reach(needs: list[DecoderSpec], ks: tuple[int, ...], options: Options) -> None:
    """A decoder whose trained drafter drafts fewer than some of ``ks`` runs at the rest (a suite's k
    grid serves decoders of every reach), said once; one that reaches none of them is an error."""
    for need in needs:
        asked, reached = need.lengths(ks), need.lengths(ks, options)
        if asked == reached:
            continue
        left_out = ",".join(str(k) for k in asked if k not in reached)
        beyond = f"k={left_out} is beyond its drafter (k <= {need.reach(options)})"
        if not reached:
            raise HarnessError(f"decoder '{need.name}': {beyond}")
        print(f"sdsat-bench: note: '{need.name}' runs at k={','.join(map(str, reached))}; {beyond}", file=sys.stderr)


def for_decode(cfg: DecodeConfig) -> tuple[LoadedModel, Decoder, SamplingParams]:
    """`decode`'s model, decoder and sampling, loaded and warmed up as a run's are."""
    lm, draft = load_models(cfg, cfg.device, (cfg.decoder,), ())  # make_decoder checks k after its other settings
    decoder = make_decoder(
        cfg.decoder, lm, k=cfg.k, accept=cfg.accept, tree=cfg.tree, draft=draft, **decoder_options(cfg)
    )
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed)
    warm_up(lm, decoder, cfg.temperature)
    return lm, decoder, sampling


@dataclass
class Workbench:
    cfg: RunConfig
    lm: LoadedModel
    decoders: dict[tuple, Decoder]
    prompts: dict[tuple[str, str], list[int]]
    _warmed: set = field(default_factory=set)

    @classmethod
    def for_run(cls, cfg: RunConfig, device: str, todo: list[WorkUnit], problems: dict[str, list]) -> Workbench:
        lm, draft = load_models(cfg, device, cfg.decoders, cfg.ks)
        decoders: dict = {}
        for unit in todo:
            key = (unit.decoder, unit.k, unit.accept)
            if key not in decoders and not is_control(unit.decoder):
                accept = "exact" if unit.accept == "-" else unit.accept
                decoders[key] = make_decoder(
                    unit.decoder, lm, k=unit.k, accept=accept, draft=draft, **decoder_options(cfg)
                )
        # completion prompts come without trailing whitespace (prompting: the whitespace rule)
        prompts = {(t, p.problem_id): prompt_ids(lm, p, cfg.fim_order) for t, ps in problems.items() for p in ps}
        bench = cls(cfg, lm, decoders, prompts)
        bench._reserve()
        return bench

    def _reserve(self) -> None:
        """One static cache for the whole run: a later growth would recompile every compiled block size."""
        modes = {t <= 0 for t in self.cfg.temperatures}  # greedy and/or sampling
        used = [pair for d in self.decoders.values() for g in modes for pair in decoder_engines(d, g)]
        longest = max(map(len, self.prompts.values()), default=0)
        # a draft model's cache runs up to a block ahead of the target's, hence the margin
        needed = longest + self.cfg.max_new_tokens + 2 * max((max(b, default=1) for _, b in used), default=1)
        for engine in {id(e): e for e, _ in [(self.lm.engine, ()), *used]}.values():
            engine.reserve(needed)

    def decoder(self, unit: WorkUnit) -> Decoder | None:
        """The unit's decoder; None for the reference control."""
        if is_control(unit.decoder):
            return None
        try:
            return self.decoders[(unit.decoder, unit.k, unit.accept)]
        except KeyError:
            raise HarnessError(f"no decoder was set up for {unit}") from None

    def stop(self, problem) -> StopCondition:
        return problem_stop(self.lm, problem, self.cfg.max_new_tokens)

    def generate(
        self, decoder: Decoder | None, problem, ids: list[int], stop: StopCondition, sampling: SamplingParams
    ) -> Generation:
        """The decoder's generation, warmed up first (outside the timed record); for the reference
        control, its reference as the completion, with no tokens and no timing."""
        if decoder is None:
            return Generation([], problem.reference, "reference", Stats(loops_observed=False))
        if (decoder, sampling.temperature) not in self._warmed:
            self._warmed.add((decoder, sampling.temperature))
            warm_up(self.lm, decoder, sampling.temperature)
        # The same seed gives the same tokens each time: only the timing differs, and the median one is
        # kept (a transient load spoils one repeat, not the record).
        gens = sorted(
            (decoder.generate(ids, stop, sampling) for _ in range(self.cfg.repeats)), key=lambda g: g.stats.decode_s
        )
        return gens[len(gens) // 2]

    def higher_precision(self):
        """The run's model in the precision that judges its greedy divergences (harness.exactness)."""
        from harness.exactness import HIGHER_PRECISION

        cfg = self.cfg
        higher = HIGHER_PRECISION[cfg.dtype]
        # the engine at its default: this model only scores divergences
        spec = replace(cfg.model_spec, device=str(self.lm.device), dtype=higher, engine=ModelSpec.engine)
        return load_model(spec).model
