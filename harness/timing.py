"""The median time of a repeated call, on the device's clock: what the probe's cost curve and the
CUDA-graph library choice both measure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls (CUDA events on a GPU)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
