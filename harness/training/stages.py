"""What both training recipes share: stages that write under ``--work`` and are skipped when their
output exists (a run that was cut off resumes, and stages can be split over several calls of a lent
GPU), a training stage longer than one call continued in the next (``--call-minutes``), the process
layout under ``accelerate launch``, the corpus stage and the training budget."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.training.config import RecipeConfig
from harness.training.corpus import build_corpus
from harness.training.train import Chain, TrainConfig, TrainingCut


class StageRunner:
    """One recipe run: where each stage writes under ``cfg.work``, and how a stage runs."""

    def __init__(self, cfg: RecipeConfig, stages: tuple[str, ...], log):
        from harness.distributed import current_shard

        self.cfg, self.stages, self.log = cfg, stages, log
        cuda = torch.cuda.is_available()
        self.shard = current_shard(cpu=not cuda)
        self.device = torch.device(self.shard.device("cuda" if cuda else "cpu"))
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus_dir, self.tok_dir, self.sdsat_dir = (
            self.work / "corpus",
            self.work / "tokenizer",
            self.work / "sdsat",
        )
        timings = self.work / "timings.json"
        self.timings = json.loads(timings.read_text()) if timings.exists() else {}
        self.tokenizer = self.adaptive = None
        self.outputs: dict[str, Path] = {}  # each stage seen so far: the file that says it is finished
        # this call trains until then, and leaves the rest of a cut stage to the next call
        self.stop_at = time.time() + cfg.call_minutes * 60 if cfg.call_minutes is not None else None

    def chain(self, name: str) -> Chain:
        """Where stage ``name``'s training keeps its state between calls (``W/<name>.state``)."""
        return Chain(self.work / f"{name}.state", self.stop_at)

    def stage(
        self, name: str, output: Path | None, fn, every_process: bool = False, after: tuple[str, ...] = ()
    ) -> None:
        """Run ``fn`` unless the stage was not asked for or its ``output`` exists (a finished stage). The
        stages named in ``after`` must be finished first, in this run or in an earlier one in ``--work``:
        else one line says which is missing, before anything is loaded."""
        shard = self.shard
        if output is not None:
            self.outputs[name] = output
        runs = name in self.stages and (output is None or not output.exists())
        missing = [s for s in after if not self.outputs[s].exists()] if runs else []
        if missing:
            first = self.outputs[missing[0]]
            raise HarnessError(
                f"train: stage '{name}' needs stage '{missing[0]}' first ({first} is missing): add it to "
                f"--stages, or point --work at a directory where it has run"
            )
        if runs and (every_process or shard.is_main):
            self._run(name, fn)
        shard.wait()  # every process sees the same finished stages

    def _run(self, name: str, fn) -> None:
        """``fn``, timed (a continued stage's earlier calls included); a cut said in one line before any
        process exits (a launcher stops the rest when one does), a finished stage's state removed."""
        shard, state = self.shard, self.chain(name).state_dir
        earlier = self.timings.get(name, 0.0) if state.exists() else 0.0
        t0 = time.perf_counter()
        try:
            fn()
        except TrainingCut as cut:
            self._time(name, earlier + time.perf_counter() - t0)
            if shard.is_main:
                print(
                    f"sdsat-bench: train: stage '{name}' stopped at step {cut.step} of {cut.total} (--call-minutes "
                    f"{self.cfg.call_minutes:g}); its state is in {cut.state_dir}: run the same command again to "
                    "continue",
                    file=sys.stderr,
                    flush=True,
                )
            shard.wait()
            raise
        self._time(name, earlier + time.perf_counter() - t0)
        if shard.is_main:
            self.log(f"[train] {name}: {self.timings[name]:.1f}s")
            if state.exists():
                shutil.rmtree(state)  # the stage's output is saved: its state between calls is spent

    def _time(self, name: str, seconds: float) -> None:
        if self.shard.is_main:
            self.timings[name] = seconds
            (self.work / "timings.json").write_text(json.dumps(self.timings, indent=1))

    def make_corpus(self) -> None:
        cfg = self.cfg
        budget = {lang: int(mb * 1e6) for lang, mb in cfg.mb_per_lang.items()}
        build_corpus(list(cfg.roots), self.corpus_dir, budget, cfg.data_dir, cfg.humaneval_path)

    def train_drafter(self, kind: str, base, stream, fim, base_name: str) -> None:
        """Stage ``medusa`` or ``eagle``: that decoder's drafter trained on the frozen ``base`` at the SDSAT
        fine-tune's budget, saved as ``W/<kind>/`` (a ``--drafter``), with its log and summary."""
        from harness.training.train import train

        cfg = self.cfg
        if kind == "medusa":
            from harness.training.medusa import MedusaTrainee

            trainee = MedusaTrainee(base.to(self.device), cfg.medusa_heads, cfg.distill, cfg.medusa_own_projections)
            lr = cfg.medusa_lr
        else:
            from harness.training.eagle import EagleTrainee

            trainee, lr = EagleTrainee(base.to(self.device), cfg.distill), cfg.eagle_lr
        tc = self.train_config("drafter", lr, cfg.sdsat_minutes, seed_offset=3, warmup=50)
        trainee, summary = train(trainee, stream, tc, self.work / f"{kind}_log.jsonl", fim=fim, chain=self.chain(kind))
        if self.shard.is_main:
            trainee.drafter.save(self.work / kind, base_name)
            added = sum(p.numel() for p in trainee.drafter.parameters())
            summary = {**summary, "kind": kind, "parameters_added": added}
            (self.work / f"{kind}_summary.json").write_text(json.dumps(summary, indent=1))

    def budget(self, minutes: float, mode: str = "", name: str = "") -> dict:
        """A fixed number of optimiser steps if asked for (``--sdsat-steps`` for the SDSAT fine-tune
        alone, ``--pretrain-steps`` for the base's pretraining alone), else a time budget."""
        fixed = {"sdsat": self.cfg.sdsat_steps, "pretrain": self.cfg.pretrain_steps}.get(name or mode)
        if fixed:
            return {"max_steps": fixed, "time_budget_s": None}
        if self.cfg.max_steps:
            return {"max_steps": self.cfg.max_steps, "time_budget_s": None}
        return {"time_budget_s": minutes * 60}

    def train_config(
        self, mode: str, lr: float, minutes: float, seed_offset: int = 0, name: str = "", **more
    ) -> TrainConfig:
        """``name``: the stage, where it differs from the mode (the draft model pretrains, on its own budget)."""
        cfg = self.cfg
        common = {"seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "bf16": cfg.bf16}
        settings = {**common, **self.budget(minutes, mode, name), **more}  # ``more`` may override a common setting
        return TrainConfig(mode=mode, lr=lr, seed=cfg.seed + seed_offset, **settings)
