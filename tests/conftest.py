"""Shared fixtures: tiny checkpoints saved to disk for CLI tests."""

from __future__ import annotations

import os

import pytest
import torch

from harness.models import AdaptiveSpec
from harness.training.checkpoint import save_checkpoint
from tests.tiny import make_lm

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per test process: the tiny models gain nothing from more, and the workers
    # (pytest -n auto: one per core) would otherwise oversubscribe the cores.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny checkpoint with an sdsat entry (4 adaptive tokens), for CLI tests."""
    lm = make_lm(seed=1, dtype=torch.float32)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(lm.model, lm.tokenizer, out, AdaptiveSpec(tuple(lm.adaptive.token_ids[:4])))
    return out


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory):
    """A saved tiny checkpoint without adaptive tokens."""
    lm = make_lm(seed=2, dtype=torch.float32)
    out = tmp_path_factory.mktemp("ckpt") / "plain"
    save_checkpoint(lm.model, lm.tokenizer, out, None)
    return out
