from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import pass_at_k


def test_pass_at_k_against_hand_computed_values():
    # pass@k = 1 - C(n-c, k) / C(n, k)
    assert pass_at_k(10, 3, 1)[0] == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5)[0] == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(5, 0, 2)[0] == 0.0 and pass_at_k(5, 5, 2)[0] == 1.0
    assert pass_at_k(4, 3, 2)[0] == 1.0  # fewer than k failures: every k-subset has a pass
    per_problem = pass_at_k([10, 10, 10], [0, 5, 10], 1)
    assert np.allclose(per_problem, [0.0, 0.5, 1.0]) and per_problem.mean() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_repeated_line_counts_long_lines_only():
    from harness.metrics import has_repeated_line

    assert has_repeated_line("    self.capacity = capacity\n    x = 1\n    self.capacity = capacity\n")
    assert not has_repeated_line("    return x\n    else:\n    return x\n")  # short lines repeat in good code
    assert not has_repeated_line("")
