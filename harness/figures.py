"""The report's figures, drawn as the paper prints them (its Figures 3 and 4 are accept rate and
tokens/s against the number of adaptive tokens, per task family).

Every figure is a PNG for ``report.html``, and also an SVG for papers when asked (``report --svg``;
committed reports keep PNGs only, to stay lean). Legends sit outside
the plot area; a setting whose lines would overlap gets a panel per task; k ticks are integers;
bands are 95% t-intervals over problems clipped to the metric's domain, drawn only from
MIN_PROBLEMS_FOR_INTERVAL problems on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.decoding import DECODERS_WITH_K, is_control
from harness.metrics import t_interval

PANEL_SIZE = (4.4, 3.2)  # inches; at DPI that is 440 x 320 px a panel, legends beside
DPI = 100
MAX_COLUMNS = 3
MAX_LINES_PER_PANEL = 5  # beyond this the lines and bands of one panel cannot be told apart

# Where each metric can lie: a band never leaves it.
DOMAIN = {
    "accept_rate": (0.0, 1.0),
    "tokens_per_s": (0.0, np.inf),
    "tokens_per_forward": (0.0, np.inf),
    "speedup": (0.0, np.inf),
    "pass@1": (0.0, 1.0),
    "pass@10": (0.0, 1.0),
}
# AR is k = 0 where the metric has a value for it (accept rate has none: AR drafts nothing).
AR_AT_K0 = {"tokens_per_s", "tokens_per_forward", "speedup"}


def pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a figure is first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _setting(temperature: float, accept: str) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}, accept={accept}"


def grid(n_panels: int, columns: int = MAX_COLUMNS, sharex: bool = False, width: float = PANEL_SIZE[0]):
    cols = min(n_panels, columns)
    rows = math.ceil(n_panels / cols)
    fig, axes = pyplot().subplots(
        rows,
        cols,
        figsize=(width * cols, PANEL_SIZE[1] * rows),
        squeeze=False,
        layout="constrained",
        sharex=sharex,
    )
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def save(fig, out: Path, svg: bool = False) -> Path:
    """``out`` as PNG (the path returned) and, with ``svg``, the same figure as SVG beside it."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.savefig(out, dpi=DPI)
    if svg:
        fig.savefig(out.with_suffix(".svg"))
    pyplot().close(fig)
    return out


def _integer_k(ax, ar_drawn: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (draft length per loop" + ("; 0 = AR)" if ar_drawn else ")"))
    ax.grid(alpha=0.3)


def mean_band(values: pd.Series, domain: tuple[float, float]) -> tuple[float, float, float]:
    """Mean of per-problem values and its 95% t-interval clipped to ``domain`` (NaN below
    MIN_PROBLEMS_FOR_INTERVAL values)."""
    v = values.dropna()
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    mean, lo, hi = t_interval(v)
    if lo is None:
        return mean, np.nan, np.nan
    return mean, float(np.clip(lo, *domain)), float(np.clip(hi, *domain))


def _panels(spec: pd.DataFrame) -> list[tuple[float, str, list[str]]]:
    """(temperature, accept, tasks) per panel: one per sampling setting, or one per task of a
    setting whose task x decoder lines would not fit one panel."""
    panels = []
    for (temp, accept), g in spec.groupby(["temperature", "accept"], sort=True):
        tasks = sorted(g.task.unique())
        lines = g.groupby(["task", "decoder"]).ngroups
        groups = [[t] for t in tasks] if lines > MAX_LINES_PER_PANEL and len(tasks) > 1 else [tasks]
        panels += [(temp, accept, ts) for ts in groups]
    return panels


def _title(temp: float, accept: str, tasks: list[str], many: bool) -> str:
    return (", ".join(tasks) + " · " if many else "") + _setting(temp, accept)


def _color(task: str, decoder: str, tasks: list[str], label_task: bool) -> str:
    """The same line keeps its colour in every panel: by task where a panel holds several tasks (the
    decoder is then the line style), else by decoder."""
    index = tasks.index(task) if label_task and len(tasks) > 1 else DECODERS_WITH_K.index(decoder)
    return f"C{index % 10}"


def _k_lines(ax, records: pd.DataFrame, metric: str, tasks: list[str], label_task: bool) -> None:
    """One line per task and decoder that takes k (the peers have no k: they are in speedup.png): the
    per-generation metric's mean against k, with its band."""
    mine = records[records.task.isin(tasks) & records.decoder.isin(DECODERS_WITH_K)]
    for (task, decoder), g in mine.groupby(["task", "decoder"]):
        ar = records[(records.task == task) & (records.decoder == "ar")]
        g = pd.concat([ar, g]) if metric in AR_AT_K0 else g
        stats = [(k, *mean_band(gk[metric], DOMAIN[metric])) for k, gk in g.groupby("k")]
        ks, means, los, his = (np.array(x, dtype=float) for x in zip(*stats, strict=True))
        style = "--" if decoder == "sdsat-fused" else "-"
        label = f"{task} {decoder}" if label_task else decoder
        color = _color(task, decoder, tasks, label_task)
        ax.plot(ks, means, style, marker="o", ms=3, label=label, color=color)
        ax.fill_between(ks, los, his, alpha=0.15, color=color, lw=0)


def _speedup_lines(ax, table: pd.DataFrame, tasks: list[str], temp: float, accept: str, label_task: bool) -> None:
    """Paired speedup over AR against k (AR = 1 at k = 0), with each row's 95% interval."""
    rows = table[table.task.isin(tasks) & (table.temperature == temp) & (table.accept == accept)]
    for (task, decoder), g in rows[rows.decoder.isin(DECODERS_WITH_K)].groupby(["task", "decoder"]):
        g = g[g.speedup.notna()].sort_values("k")
        if g.empty:
            continue
        ks = np.concatenate([[0], g.k.to_numpy(float)])
        mean = np.concatenate([[1.0], g.speedup.to_numpy(float)])
        lo = np.concatenate([[1.0], g.speedup_lo.to_numpy(float, na_value=np.nan)])
        hi = np.concatenate([[1.0], g.speedup_hi.to_numpy(float, na_value=np.nan)])
        style = "--" if decoder == "sdsat-fused" else "-"
        color = _color(task, decoder, tasks, label_task)
        label = f"{task} {decoder}" if label_task else decoder
        ax.plot(ks, mean, style, marker="o", ms=3, label=label, color=color)
        ax.fill_between(ks, lo, hi, alpha=0.15, color=color, lw=0)
    ax.axhline(1.0, color="black", lw=0.8)


def plot_vs_k(
    records: pd.DataFrame, metric: str, ylabel: str, out: Path, table: pd.DataFrame | None = None, svg: bool = False
):
    """``metric`` per generation against k; with ``table``, a paired speedup panel beside each."""
    spec = records[records.decoder.isin(DECODERS_WITH_K) & records[metric].notna()]
    if spec.empty:
        return None
    records = records[records[metric].notna()]
    panels = _panels(spec)
    per_panel = 2 if table is not None else 1
    fig, axes = grid(len(panels) * per_panel, columns=MAX_COLUMNS - MAX_COLUMNS % per_panel)
    many = len(panels) > len(spec.groupby(["temperature", "accept"]))
    for i, (temp, accept, tasks) in enumerate(panels):
        ax = axes[i * per_panel]
        setting = records[(records.temperature == temp) & (records.accept == accept)]
        _k_lines(ax, setting, metric, tasks, label_task=not many)
        ax.set(title=_title(temp, accept, tasks, many), ylabel=ylabel)
        ax.set_ylim(bottom=DOMAIN[metric][0], top=1.0 if DOMAIN[metric][1] == 1.0 else None)
        _integer_k(ax, ar_drawn=metric in AR_AT_K0)
        if table is not None:
            sp = axes[i * per_panel + 1]
            _speedup_lines(sp, table, tasks, temp, accept, label_task=not many)
            sp.set(title=_title(temp, accept, tasks, many), ylabel="speedup over AR (paired, 95% CI)")
            sp.set_ylim(bottom=0)
            _integer_k(sp, ar_drawn=True)
    return save(fig, out, svg)


def plot_speedup(table: pd.DataFrame, out: Path, svg: bool = False) -> Path | None:
    """Paired speedup over AR (geometric mean, 95% interval where there are enough problems) by task
    and decoder, at each decoder's best k."""
    rows = table[(table.decoder != "ar") & table.speedup.notna()]
    if rows.empty:
        return None
    best = rows.loc[rows.groupby(["task", "decoder", "temperature", "accept"], dropna=False).speedup.idxmax()]
    tasks = list(dict.fromkeys(best.task))
    series = sorted(set(zip(best.decoder, best.temperature, best.accept, strict=True)), key=str)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(PANEL_SIZE[0], 0.5 * len(tasks) * len(series) + 2), 3.8), layout="constrained")
    width = 0.8 / len(series)
    for i, (decoder, temp, accept) in enumerate(series):
        sub = best[(best.decoder == decoder) & (best.temperature == temp) & (best.accept == accept)]
        x = np.array([tasks.index(t) for t in sub.task]) + i * width
        lo = (sub.speedup - sub.speedup_lo.fillna(sub.speedup)).clip(lower=0)
        hi = (sub.speedup_hi.fillna(sub.speedup) - sub.speedup).clip(lower=0)
        label = decoder + (" (best k)" if decoder in DECODERS_WITH_K else "")
        label += "" if temp == 0 else f" {_setting(temp, accept)}"
        bars = ax.bar(x, sub.speedup, width, yerr=[lo, hi], capsize=2, label=label)
        notes = [
            (f"k={k}" if decoder in DECODERS_WITH_K else "") + ("" if pd.notna(lo_) else " n<5")
            for k, lo_ in zip(sub.k, sub.speedup_lo, strict=True)
        ]
        ax.bar_label(bars, labels=notes, fontsize=6, padding=2)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="tokens/s over AR (paired, 95% CI)", title="speedup over AR at the best k")
    ax.set_ylim(bottom=0)
    return save(fig, out, svg)


def plot_pass_at_k(comparison: pd.DataFrame, out: Path, svg: bool = False) -> Path | None:
    """pass@k per task, a bar per run and decoder (k pooled: greedy decoders are exact), with 95%
    intervals; the control (the dataset's reference solutions) is a marker of its own, never a bar."""
    cols = [c for c in ("pass@1", "pass@10") if c in comparison.columns and comparison[c].notna().any()]
    if not cols:
        return None
    n_bars = (
        comparison.task.nunique() * comparison[~comparison.decoder.map(is_control)].groupby(["run", "decoder"]).ngroups
    )
    fig, axes = grid(len(cols), columns=2, width=max(PANEL_SIZE[0], 1.5 + 0.5 * n_bars))
    for ax, col in zip(axes, cols, strict=True):
        sub = comparison[comparison[col].notna()]
        controls = sub.decoder.map(is_control)
        control = sub[controls].groupby("task")[col].mean()
        bars = sub[~controls]
        tasks = sorted(set(bars.task) | set(control.index))
        series = list(dict.fromkeys(zip(bars.run, bars.decoder, bars.temperature, strict=True)))
        width = 0.8 / max(1, len(series))
        for i, (run, decoder, temp) in enumerate(series):
            s = bars[(bars.run == run) & (bars.decoder == decoder) & (bars.temperature == temp)]
            agg = s.groupby("task")[[c for c in (col, f"{col}_lo", f"{col}_hi") if c in s]].mean()
            x = np.array([tasks.index(t) for t in agg.index]) + i * width
            err = None
            if f"{col}_lo" in agg:
                err = [
                    (agg[col] - agg[f"{col}_lo"]).fillna(0).clip(lower=0),
                    (agg[f"{col}_hi"] - agg[col]).fillna(0).clip(lower=0),
                ]
            label = f"{run}: {decoder}" + ("" if temp == 0 else f" T={temp:g}")
            drawn = ax.bar(x, agg[col], width, yerr=err, capsize=2, label=label)
            ax.bar_label(drawn, fmt="%.2f", fontsize=6, padding=1)  # a bar at 0 is still read
        if len(control):
            x = np.array([tasks.index(t) for t in control.index]) + 0.4 - width / 2
            ax.scatter(x, control.values, marker="_", s=400, color="black", label="control: reference solutions")
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"{col} (95% CI)", title=col)
        ax.set_ylim(0, 1.05)
    return save(fig, out, svg)
