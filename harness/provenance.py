"""Where a run's numbers come from: the weights (hashed) and the machine (software and devices)."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path


def model_hash(path: str) -> str | None:
    """sha256 over the weight files of a local checkpoint (None for a hub id)."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


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
