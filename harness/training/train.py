"""The training loop, shared by pretraining and SDSAT fine-tuning, under ``accelerate``
(one process, DDP or FSDP as ``accelerate launch`` configures it).

A run longer than one call of a lent GPU trains in several (a :class:`Chain`): when the call's time is
up the loop saves its state (weights and optimiser through ``accelerate``, the step, the fixed step
count, the elapsed time and every process's data sampling generators) and raises :class:`TrainingCut`;
the same call later loads it and goes on from that step, as if it had never stopped."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedType
from torch import nn

from harness.training.data import take_windows, window_starts
from harness.training.sdsat_batches import IGNORE, batch_mask, build_naive_batch, build_sdsat_batch


@dataclass
class TrainConfig:
    # pretrain | sdsat | naive (inline insertion, the Figure 5 baseline) | drafter (medusa's or eagle's)
    mode: str = "pretrain"
    seq_len: int = 512
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 100_000
    # Steps are fixed after 40 timed steps to fit this budget; None trains exactly max_steps.
    time_budget_s: float | None = 300.0
    n_groups: int = 16  # sdsat: adaptive groups per sequence
    adaptive_weight: float = 1.0  # sdsat: lambda
    distill: bool = False  # sdsat: adaptive targets = the model's own standard distribution at i+j (detached)
    # With a teacher (a retrofit's frozen base), standard tokens of plain documents learn the teacher's
    # distribution (KL), so they keep the base's predictions; FIM-formatted documents, which the base
    # cannot read (their tokens are new), keep the corpus labels.
    log_every: int = 50
    seed: int = 0
    bf16: bool = True
    grad_accum: int = 1  # micro-batches of batch_size per optimiser step (per process)


@dataclass(frozen=True)
class Chain:
    """Where a run that this call cuts short keeps its state, and the wall-clock time (``time.time()``)
    after which this call cuts it: checked after each optimiser step, so every call makes at least one
    step (None: never cut)."""

    state_dir: Path
    stop_at: float | None = None


class TrainingCut(Exception):
    """This call's time is up: the run's state is in ``state_dir``, and the same command continues it."""

    def __init__(self, state_dir: Path, step: int, total: int, processes: int = 1):
        super().__init__(f"cut at step {step} of {total}; its state is in {state_dir}")
        self.state_dir, self.step, self.total, self.processes = state_dir, step, total, processes


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds (all of them for None); 0, with no gradient, where it
    holds nowhere: a drafter's batch of FIM-formatted windows alone, which its base cannot read, counts
    for nothing (a plain mean over no positions is NaN, which would poison every weight)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp(min=1)


class FrozenBaseTrainee(nn.Module):
    """A drafter trained on a frozen base (the ``drafter`` mode: Medusa heads, an EAGLE layer);
    ``forward(x, valid)`` returns the losses. ``valid`` (B, T) bool marks the positions whose predictions
    count (None: all); a retrofit's FIM-formatted documents hold ids the base lacks: they are clamped
    and left out."""

    def __init__(self, base: nn.Module, drafter: nn.Module, distill: bool):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.drafter = drafter
        self.distill = distill  # targets: the base's own distribution, or the corpus tokens
        self.config = base.config

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` with ids the base lacks clamped, and the base's last hidden states over it."""
        x = x.clamp(max=self.base.get_input_embeddings().num_embeddings - 1)
        with torch.no_grad():
            return x, self.base.get_decoder()(input_ids=x).last_hidden_state


def step_losses(
    model, x: torch.Tensor, cfg: TrainConfig, adaptive_ids: list[int] | None, gen=None, teacher=None, fim=None
) -> dict:
    """Losses of one batch. Pretraining: next-token CE. SDSAT: standard loss + lambda * adaptive loss,
    the standard one against the labels, or with ``teacher`` (x -> logits) against its distribution
    where ``fim`` (B, T bool: FIM-formatted positions) is False."""
    if cfg.mode == "pretrain":
        logits = model(input_ids=x).logits
        std = cross_entropy(logits[:, :-1], x[:, 1:])
        return {"loss": std, "standard": std}
    if cfg.mode == "drafter":  # a drafter on a frozen base (training.medusa, training.eagle), FIM documents left out
        return model(x, None if fim is None else ~fim)
    if cfg.mode == "naive":
        batch = build_naive_batch(x, adaptive_ids, cfg.n_groups, generator=gen)
        logits = model(input_ids=batch.input_ids).logits
        std_mask = batch.is_standard
        std = cross_entropy(logits[std_mask], batch.targets[std_mask])
        ada = cross_entropy(logits[~std_mask], batch.targets[~std_mask])
        return {"loss": std + cfg.adaptive_weight * ada, "standard": std, "adaptive": ada}
    batch = build_sdsat_batch(x, adaptive_ids, cfg.n_groups, generator=gen)
    mask = batch_mask(_unwrapped(model), batch.allowed)
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask).logits
    t = batch.seq_len
    std = _standard_loss(logits[:, :t], batch.targets[:, :t], x, teacher, fim)
    if cfg.distill:
        # A_j stands for position i+j: its target is what the standard token there predicts.
        # (the positions are gathered before the softmax: only G*K of the T rows are needed)
        pos = batch.position_ids[:, t:].clamp(max=t - 1)
        soft = logits[:, :t].detach().gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float().softmax(-1)
        valid = batch.targets[:, t:] != IGNORE
        ada = -(soft * logits[:, t:].float().log_softmax(-1)).sum(-1)[valid].mean()
    else:
        ada = cross_entropy(logits[:, t:], batch.targets[:, t:])
    return {"loss": std + cfg.adaptive_weight * ada, "standard": std, "adaptive": ada}


def _standard_loss(logits, targets, x, teacher, fim) -> torch.Tensor:
    """Mean over positions with a target: KL(teacher || model) where the teacher applies, else CE."""
    if teacher is None:
        return cross_entropy(logits, targets)
    with torch.no_grad():
        log_q = teacher(x).float().log_softmax(-1)
    log_p = logits.float().log_softmax(-1)  # one (B, T, V) fp32 tensor serves both losses
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    valid = targets != IGNORE
    ce = -log_p.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    per_position = torch.where(fim, ce, kl) if fim is not None else kl
    return per_position[valid].mean()


def _unwrapped(model):
    """The transformers model inside a DDP/FSDP wrapper (its config says which attention it uses)."""
    return getattr(model, "module", model)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (norms, biases)."""
    trained = [p for p in model.parameters() if p.requires_grad]  # a LoRA model trains its adapters only
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=torch.cuda.is_available())


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``total`` steps."""
    warm = min(1.0, (step + 1) / cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class _Clock:
    """A call's first 20 steps carry start-up costs (allocator, kernel selection): the next 40 are timed,
    and with a time budget the number of steps is fixed then, the same on every process (DDP would wait
    forever otherwise). A continued run counts the time of its earlier calls, and keeps a step count
    that an earlier call fixed."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, loop: dict):
        self.cfg, self.accelerator = cfg, accelerator
        self.start = time.perf_counter() - loop["elapsed"]  # the earlier calls' time counts against the budget
        self.timed_step = loop["step"] + 20
        self.timed_from, self.tokens_at_timed = None, 0
        self.fixed = cfg.time_budget_s is None or loop["fixed"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def total_after(self, step: int, total: int, tokens_seen: int) -> int:
        if step == self.timed_step:
            self.timed_from, self.tokens_at_timed = time.perf_counter(), tokens_seen
        if self.fixed or step != self.timed_step + 40:
            return total
        self.fixed = True
        per_step = (time.perf_counter() - self.timed_from) / 40
        left = self.cfg.time_budget_s - self.elapsed()
        total = min(self.cfg.max_steps, max(step + 1, step + int(left / per_step)))
        device = self.accelerator.device
        return int(self.accelerator.gather(torch.tensor([total], device=device)).min())

    def summary(self, step: int, tokens_seen: int) -> dict:
        end = time.perf_counter()
        out = {"steps": step, "tokens": tokens_seen, "seconds": end - self.start}
        if self.timed_from is not None and step > self.timed_step:  # all processes' tokens/s after start-up
            out["steady_tokens_per_s"] = (tokens_seen - self.tokens_at_timed) / (end - self.timed_from)
        return out


def train(
    model,
    stream: np.ndarray,
    cfg: TrainConfig,
    log_path: str | Path,
    adaptive_ids: list[int] | None = None,
    teacher=None,
    fim: np.ndarray | None = None,
    chain: Chain | None = None,
):
    """Train ``model`` on windows of ``stream`` for ``cfg.max_steps`` or the time budget; returns the
    trained model (one plain module) and a summary. ``teacher`` and ``fim`` (a bool per stream
    position): see :func:`step_losses`. With ``chain``, continue from its saved state if there is one,
    and raise :class:`TrainingCut` (state saved) when its time is up before the last step."""
    cuda = torch.cuda.is_available()
    # Under accelerate launch / torchrun without CUDA the processes train on CPU over gloo.
    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.bf16 and cuda else "no", cpu=not cuda, gradient_accumulation_steps=cfg.grad_accum
    )
    rank = accelerator.process_index
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    model, opt = accelerator.prepare(model, _optimizer(model, cfg))
    model.train()
    loop = _start(cfg, chain, accelerator, rng, gen)
    clock = _Clock(cfg, accelerator, loop)
    total, step, tokens_seen = loop["total"], loop["step"], loop["tokens"]
    device = accelerator.device
    if step and accelerator.is_main_process:
        _log_until(log_path, step)
    with open(log_path, "a" if step else "w") as log:
        while step < total:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step, total)
            for _ in range(cfg.grad_accum):
                starts = window_starts(len(stream), cfg.batch_size, cfg.seq_len, rng)
                x = torch.from_numpy(take_windows(stream, starts, cfg.seq_len)).to(device)
                f = None if fim is None else torch.from_numpy(take_windows(fim, starts, cfg.seq_len)).to(device)
                losses = _micro_step(accelerator, model, opt, x, cfg, adaptive_ids, gen, teacher, f)
                tokens_seen += x.numel() * accelerator.num_processes
            step += 1
            total = clock.total_after(step, total, tokens_seen)
            if step % cfg.log_every == 0 or step == total:
                _log(accelerator, log, losses, step, total, learning_rate(cfg, step, total), clock, tokens_seen)
            if chain is not None and step < total and _time_up(accelerator, chain.stop_at, step):
                loop.update(step=step, total=total, tokens=tokens_seen, elapsed=clock.elapsed(), fixed=clock.fixed)
                _cut(chain.state_dir, accelerator, loop, rng, gen)
        accelerator.wait_for_everyone()
    summary = {
        **clock.summary(step, tokens_seen),
        "calls": loop["calls"],
        "processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "config": asdict(cfg),
    }
    return _gathered(accelerator, model), summary


def _micro_step(accelerator, model, opt, x, cfg: TrainConfig, adaptive_ids, gen, teacher, fim) -> dict:
    """One micro-batch's forward and backward; the optimiser steps where accumulation syncs."""
    with accelerator.accumulate(model), accelerator.autocast():
        losses = step_losses(model, x, cfg, adaptive_ids, gen, teacher, fim)
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def _time_up(accelerator: Accelerator, stop_at: float | None, step: int) -> bool:
    """Whether this call stops now. One process reads its clock (no device sync); several agree every
    10 steps, all together (one late process would hang the rest), at the cost of one small gather."""
    if stop_at is None:
        return False
    if accelerator.num_processes == 1:
        return time.time() >= stop_at
    if step % 10 and step != 1:
        return False
    late = torch.tensor([float(time.time() >= stop_at)], device=accelerator.device)
    return bool(accelerator.gather(late).max() > 0)


def _start(cfg: TrainConfig, chain: Chain | None, accelerator: Accelerator, rng: np.random.Generator, gen) -> dict:
    """Where the loop starts: the state an earlier call saved, or step 0."""
    if chain is not None and (Path(chain.state_dir) / f"loop_{accelerator.process_index}.pt").exists():
        return _load(chain.state_dir, accelerator, rng, gen)
    return {"step": 0, "total": cfg.max_steps, "tokens": 0, "elapsed": 0.0, "fixed": False, "calls": 1}


def _cut(state_dir: Path, accelerator: Accelerator, loop: dict, rng: np.random.Generator, gen) -> None:
    _save(state_dir, accelerator, loop, rng, gen)
    raise TrainingCut(Path(state_dir), loop["step"], loop["total"], accelerator.num_processes)


def _save(state_dir: Path, accelerator: Accelerator, loop: dict, rng: np.random.Generator, gen) -> None:
    """Weights, optimiser and the library RNGs through ``accelerate``, then each process's loop state;
    written beside the old state and swapped in whole, so that a call killed while saving leaves the
    previous state intact."""
    state_dir = Path(state_dir)
    fresh = state_dir.with_name(state_dir.name + ".new")
    if accelerator.is_main_process and fresh.exists():
        shutil.rmtree(fresh)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh), safe_serialization=False)  # tied and frozen weights pickle as they are
    sampling = {"numpy": rng.bit_generator.state, "torch": gen.get_state()}
    torch.save({**loop, **sampling}, fresh / f"loop_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if state_dir.exists():
            shutil.rmtree(state_dir)
        fresh.rename(state_dir)
    accelerator.wait_for_everyone()


def _load(state_dir: Path, accelerator: Accelerator, rng: np.random.Generator, gen) -> dict:
    """The loop state a cut call saved, its weights, optimiser and generators restored in place."""
    accelerator.load_state(str(state_dir))
    loop = torch.load(Path(state_dir) / f"loop_{accelerator.process_index}.pt", weights_only=False)
    rng.bit_generator.state = loop.pop("numpy")
    gen.set_state(loop.pop("torch"))
    loop["calls"] += 1
    return loop


def _log_until(log_path: str | Path, step: int) -> None:
    """The log of a continued run up to its saved step: a call killed past its last save (no time left
    to cut) logged steps that the continued run makes again."""
    path = Path(log_path)
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in kept))


def _log(accelerator, log, losses: dict, step: int, total: int, lr: float, clock: _Clock, tokens_seen: int) -> None:
    elapsed = clock.elapsed()
    record = {k: float(v.detach()) for k, v in losses.items()}
    record.update(step=step, total_steps=total, lr=lr, elapsed_s=elapsed, tokens=tokens_seen)
    record["tokens_per_s"] = tokens_seen / elapsed
    if accelerator.is_main_process:
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)


def _gathered(accelerator: Accelerator, model):
    """The trained model as one plain module in eval mode: unwrapped from DDP, or, under FSDP, rebuilt
    on the main process from the gathered full state dict (every process must take part in the
    gather; the others get their unwrapped shard-holding module)."""
    full = accelerator.get_state_dict(model)
    model = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.is_main_process:
        plain = type(model)(model.config)
        plain.load_state_dict(full)
        model = plain.to(accelerator.device)
    return model.eval()
