"""The report's figures: bands inside each metric's domain, integer k ticks with AR at k = 0, a panel
per task once lines would overlap, the control apart from the decoders, PNG and SVG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import figures


def _records(tasks: list[str], decoders=("sdsat", "sdsat-fused"), ks=(1, 3, 5), problems: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        for p in range(problems):
            rows.append(
                {
                    "task": task,
                    "problem_id": p,
                    "decoder": "ar",
                    "k": 0,
                    "temperature": 0.0,
                    "accept": "-",
                    "accept_rate": np.nan,
                    "tokens_per_s": 10.0 + rng.random(),
                    "tokens_per_forward": 1.0,
                }
            )
            for decoder in decoders:
                for k in ks:
                    # accept rates near 0 with a wide spread: an unclipped band would go below 0
                    rows.append(
                        {
                            "task": task,
                            "problem_id": p,
                            "decoder": decoder,
                            "k": k,
                            "temperature": 0.0,
                            "accept": "-",
                            "accept_rate": rng.choice([0.0, 0.0, 0.0, 0.9]),
                            "tokens_per_s": 12.0 + rng.random(),
                            "tokens_per_forward": 1.0 + k / 3,
                        }
                    )
    return pd.DataFrame(rows)


@pytest.fixture
def captured(monkeypatch):
    """The figures drawn, kept open instead of saved."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out, svg=False: drawn.append(fig) or out)
    return drawn


def test_band_is_clipped_to_the_domain_and_absent_below_the_minimum_problems():
    mean, lo, hi = figures.mean_band(pd.Series([0.0, 0.0, 0.0, 0.0, 0.9]), (0.0, 1.0))
    assert lo == 0.0 and 0.0 < mean < hi <= 1.0
    assert np.isnan(figures.mean_band(pd.Series([0.0, 0.9]), (0.0, 1.0))[1])  # two problems: no band


def test_k_axis_has_integer_ticks_ar_at_zero_and_bands_inside_the_domain(captured, tmp_path):
    figures.plot_vs_k(_records(["humaneval"]), "tokens_per_forward", "tokens per forward", tmp_path / "t.png")
    ax = captured[0].axes[0]
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
    assert xs.min() == 0  # AR drawn at k = 0, as the axis label promises
    assert "0 = AR" in ax.get_xlabel()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)
    figures.plot_vs_k(_records(["humaneval"]), "accept_rate", "accept rate", tmp_path / "a.png")
    ax = captured[1].axes[0]
    for band in ax.collections:
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() >= 0.0 and ys.max() <= 1.0
    assert "0 = AR" not in ax.get_xlabel()  # AR has no accept rate


def test_a_panel_per_task_once_lines_would_overlap_and_speedup_beside_tokens_per_s(captured, tmp_path):
    records = _records(["humaneval", "multiple-js", "multiple-cpp"])
    figures.plot_vs_k(records, "accept_rate", "accept rate", tmp_path / "a.png")
    assert [ax.get_title() for ax in captured[0].axes if ax.get_visible()] == [
        "humaneval · greedy",
        "multiple-cpp · greedy",
        "multiple-js · greedy",
    ]
    table = pd.DataFrame(
        [
            {
                "task": t,
                "decoder": d,
                "k": k,
                "temperature": 0.0,
                "accept": "-",
                "speedup": 1.2,
                "speedup_lo": 1.1,
                "speedup_hi": 1.3,
            }
            for t in ["humaneval"]
            for d in ("sdsat", "sdsat-fused")
            for k in (1, 3, 5)
        ]
    )
    figures.plot_vs_k(_records(["humaneval"]), "tokens_per_s", "tokens/s", tmp_path / "s.png", table)
    titles = [ax.get_ylabel() for ax in captured[1].axes if ax.get_visible()]
    assert titles == ["tokens/s", "speedup over AR (paired, 95% CI)"]


def test_pass_at_k_draws_the_control_apart_from_the_decoders(captured, tmp_path):
    comparison = pd.DataFrame(
        [
            {"run": "base", "task": "humaneval", "decoder": "ar", "temperature": 0.0, "pass@1": 0.0},
            {"run": "base", "task": "humaneval", "decoder": "reference", "temperature": 0.0, "pass@1": 1.0},
            {"run": "sdsat", "task": "humaneval", "decoder": "sdsat", "temperature": 0.0, "pass@1": 0.0},
        ]
    )
    figures.plot_pass_at_k(comparison, tmp_path / "p.png")
    ax = captured[0].axes[0]
    assert max(bar.get_height() for bar in ax.patches) == 0.0  # no bar at the control's 1.0
    labels = ax.get_legend_handles_labels()[1]
    assert "control: reference solutions" in labels and "base: ar" in labels and "sdsat: sdsat" in labels


def test_figures_are_png_and_on_request_svg(tmp_path):
    out = figures.plot_vs_k(_records(["humaneval"]), "accept_rate", "accept rate", tmp_path / "a.png")
    assert out == tmp_path / "a.png" and out.stat().st_size > 0 and not (tmp_path / "a.svg").exists()
    figures.plot_vs_k(_records(["humaneval"]), "accept_rate", "accept rate", tmp_path / "b.png", svg=True)
    assert (tmp_path / "b.svg").stat().st_size > 0
