"""Where a run's numbers come from: the machine (software and devices); weights are hashed by harness.weights."""

from __future__ import annotations

import os
import platform
import sys


def machine() -> dict:
    import torch
    import transformers

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def device_name(device) -> str:
    """``cpu``, or ``cuda:N <card name>``."""
    import torch

    return f"{device}" + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
