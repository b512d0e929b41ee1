"""Data-parallel evaluation under ``accelerate launch``: which problems this process runs and on
which device. Work is split by problem, so that AR and the speculative decoders of one problem run
in one process on one device: a speed ratio never mixes two devices, and ``identical_to_ar`` is
decided where both completions are."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    local_index: int = 0
    state: Any = None  # accelerate.PartialState when launched with several processes
    gpus: int = 0  # GPUs on this host that the processes share (0: one per process, or none)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def owns(self, problem_number: int) -> bool:
        return problem_number % self.count == self.index

    def device(self, requested: str) -> str:
        """``cuda`` becomes this process's local device: one GPU per process, or, with more processes
        than GPUs, the GPUs dealt round-robin (accuracy runs: a shared GPU's timings mean little)."""
        if requested != "cuda" or self.count == 1:
            return requested
        return f"cuda:{self.local_index % self.gpus if self.gpus else self.local_index}"

    def wait(self) -> None:
        if self.state is None:
            return
        if self.gpus:  # accelerate's barrier names this process's GPU, which a shared one is not
            import torch.distributed

            torch.distributed.barrier()
        else:
            self.state.wait_for_everyone()

    def gather(self, obj) -> list:
        """Every process's ``obj``, in process order (a collective: every process must call it)."""
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


def current_shard(cpu: bool = False) -> Shard:
    """This process's shard when launched with several processes (``accelerate launch --multi_gpu
    --num_processes N``, or ``torchrun``, which it calls; on CPU, processes talk through gloo, and
    ``cpu`` must be True or accelerate leaves every process on its own). More processes on a host
    than it has GPUs share them, and talk through gloo (NCCL refuses two processes on one GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    from accelerate import PartialState

    gpus = 0
    if not cpu:
        import torch

        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        gpus = torch.cuda.device_count() if local > torch.cuda.device_count() else 0
    state = PartialState(cpu=cpu or gpus > 0)
    return Shard(state.process_index, state.num_processes, state.local_process_index, state, gpus)
