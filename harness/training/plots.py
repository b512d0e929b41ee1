"""Training plots for model cards: loss curves, and the paper's Figure 5 (standard-token loss of our
packed-group training against naive inline insertion)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(pretrain_log: str | Path, sdsat_log: str | Path, out: str | Path) -> None:
    pre, sd = _read(pretrain_log), _read(sdsat_log)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([r["step"] for r in pre], [r["standard"] for r in pre])
    ax[0].set(title="pretraining: train loss", xlabel="step", ylabel="nats/token")
    ax[1].plot([r["step"] for r in sd], [r["standard"] for r in sd], label="standard tokens")
    ax[1].plot([r["step"] for r in sd], [r["adaptive"] for r in sd], label="adaptive tokens (offsets 1..K)")
    ax[1].set(title="SDSAT fine-tuning: train losses", xlabel="step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_method_comparison(logs: dict[str, str | Path], out: str | Path) -> None:
    """Standard-token train loss against step for each fine-tuning variant (Figure 5 style)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, path in logs.items():
        rows = _read(path)
        ax.plot([r["step"] for r in rows], [r["standard"] for r in rows], label=name)
    ax.set(title="standard-token loss while adding adaptive tokens", xlabel="step", ylabel="nats/token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
