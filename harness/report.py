"""Reports rendered from results alone: summary tables, the paper's figures (matplotlib) and one
self-contained ``report.html``; several runs side by side with deltas against the first."""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.decoding import DECODERS_WITH_K
from harness.errors import HarnessError
from harness.metrics import GROUP, summarize
from harness.results import RunDirectory

# Metrics compared across runs (run vs run, model vs model, decoder settings vs each other).
COMPARED = [
    "pass@1",
    "pass@10",
    "accept_rate_pooled",
    "tokens_per_forward",
    "tokens_per_s",
    "speedup",
    "identical_to_ar",
]


def _setting(temperature: float, accept: str) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}, accept={accept}"


def _mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval."""
    v = values.dropna().astype(float)
    if len(v) == 0:
        return np.nan, np.nan
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(half)


def _pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a figure is first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(n_panels: int):
    fig, axes = _pyplot().subplots(1, n_panels, figsize=(4.6 * n_panels, 3.6), squeeze=False)
    return fig, axes[0]


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    _pyplot().close(fig)
    return out


def plot_vs_k(df: pd.DataFrame, metric: str, ylabel: str, out: Path) -> Path | None:
    """The paper's Figures 3 and 4: ``metric`` against k, a line per task and decoder that takes k
    (solid: sdsat, dashed: sdsat-fused) with a 95% band over problems, a panel per sampling setting.
    k = 0 is the AR decoder (tokens/s only)."""
    spec = df[df.decoder.isin(DECODERS_WITH_K) & df[metric].notna()]
    if spec.empty:
        return None
    ar = df[(df.decoder == "ar") & df[metric].notna()] if metric == "tokens_per_s" else df.iloc[0:0]
    settings = sorted(spec.groupby(["temperature", "accept"]).groups)
    fig, axes = _figure(len(settings))
    for ax, (temp, accept) in zip(axes, settings, strict=True):
        panel = spec[(spec.temperature == temp) & (spec.accept == accept)]
        for (task, decoder), g in panel.groupby(["task", "decoder"]):
            g = pd.concat([ar[(ar.task == task) & (ar.temperature == temp)], g])
            stats = [(k, *_mean_ci(gk[metric])) for k, gk in g.groupby("k")]
            ks, means, halves = (np.array(x, dtype=float) for x in zip(*stats, strict=True))
            style = "--" if decoder == "sdsat-fused" else "-"
            ax.plot(ks, means, style, marker="o", ms=3, label=f"{task} {decoder}")
            ax.fill_between(ks, means - halves, means + halves, alpha=0.15)
        ax.set(title=_setting(temp, accept), xlabel="k (adaptive tokens per loop; 0 = AR)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, out)


def plot_speedup(table: pd.DataFrame, out: Path) -> Path | None:
    """Paired speedup over AR (geometric mean, 95% interval) by task and decoder, at each decoder's
    best k."""
    rows = table[(table.decoder != "ar") & table.speedup.notna()]
    if rows.empty:
        return None
    best = rows.loc[rows.groupby(["task", "decoder", "temperature", "accept"], dropna=False).speedup.idxmax()]
    tasks = list(dict.fromkeys(best.task))
    series = sorted(set(zip(best.decoder, best.temperature, best.accept, strict=True)), key=str)
    fig, ax = _pyplot().subplots(figsize=(max(5.0, 0.6 * len(tasks) * len(series)), 3.8))
    width = 0.8 / len(series)
    for i, (decoder, temp, accept) in enumerate(series):
        sub = best[(best.decoder == decoder) & (best.temperature == temp) & (best.accept == accept)]
        x = np.array([tasks.index(t) for t in sub.task]) + i * width
        lo = (sub.speedup - sub.speedup_lo.fillna(sub.speedup)).clip(lower=0)
        hi = (sub.speedup_hi.fillna(sub.speedup) - sub.speedup).clip(lower=0)
        label = (
            decoder
            + (" (best k)" if decoder in DECODERS_WITH_K else "")
            + ("" if temp == 0 else f" {_setting(temp, accept)}")
        )
        bars = ax.bar(x, sub.speedup, width, yerr=[lo, hi], capsize=2, label=label)
        if decoder in DECODERS_WITH_K:
            ax.bar_label(bars, labels=[f"k={k}" for k in sub.k], fontsize=6, padding=2)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="tokens/s over AR (paired, 95% CI)", title="speedup over AR at the best k")
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_pass_at_k(comparison: pd.DataFrame, out: Path) -> Path | None:
    """pass@k of several runs (e.g. base vs SDSAT model) side by side, per task: the paper's accuracy
    tables as a figure."""
    cols = [c for c in ("pass@1", "pass@10") if c in comparison.columns and comparison[c].notna().any()]
    if not cols:
        return None
    fig, axes = _figure(len(cols))
    for ax, col in zip(axes, cols, strict=True):
        sub = comparison[comparison[col].notna()]
        pivot = sub.pivot_table(index="task", columns="run", values=col, aggfunc="max")
        pivot.plot.bar(ax=ax, rot=30, fontsize=8)
        ax.set(title=col, ylabel=col, xlabel="")
        ax.legend(fontsize=7)
    return _save(fig, out)


def compare_runs(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rows of every run (column ``run``) with, for each compared metric, its delta against the first
    run's matching row (same task, decoder, k and sampling settings)."""
    labels = list(tables)
    stacked = pd.concat([t.assign(run=label) for label, t in tables.items()], ignore_index=True)
    first = tables[labels[0]].set_index(GROUP)
    metrics = [m for m in COMPARED if m in stacked.columns]
    for m in metrics:
        base = first[m] if m in first.columns else pd.Series(dtype=float)
        keys = pd.MultiIndex.from_frame(stacked[GROUP])
        stacked[f"Δ {m}"] = stacked[m].astype(float).values - base.reindex(keys).astype(float).values
    return stacked[["run", *GROUP, *[c for m in metrics for c in (m, f"Δ {m}")]]]


def _img(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"></figure>'


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="", border=0, classes="t")


def write_html(out: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:2px 6px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}pre{background:#f5f5f5;"
        "padding:.5em;overflow-x:auto;font-size:12px}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path


COMPACT = [
    "task",
    "decoder",
    "k",
    "temperature",
    "problems",
    "pass@1",
    "accept_rate_pooled",
    "tokens_per_forward",
    "tokens_per_s",
    "speedup",
    "identical_to_ar",
    "diverged_numerical",
    "diverged_mismatch",
    "unavailable",
]


def compact_summary(table: pd.DataFrame) -> str:
    """The terminal's view of the summary: the columns most read (summary.md has them all)."""
    return table[[c for c in COMPACT if c in table.columns]].to_markdown(index=False, floatfmt=".3f")


def config_differences(infos: dict[str, dict]) -> list[str]:
    """Settings (besides the model) in which runs to be compared differ."""
    configs = [info.get("config") or {} for info in infos.values()]
    keys = sorted({k for c in configs for k in c} - {"model"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _scoring_note(records: list[dict]) -> str:
    """Which sandbox judged the records, and the records nobody could judge (never silently a fail)."""
    levels = sorted({r["isolation"] for r in records if r.get("isolation")})
    note = f"<p>verdicts judged in: {html.escape(', '.join(levels))}</p>" if levels else ""
    unscored = [r for r in records if r.get("status") == "unavailable"]
    if unscored:
        tasks = ", ".join(sorted({r["task"] for r in unscored}))
        note += (
            f"<p><b>{len(unscored)} records unscored: toolchain unavailable ({html.escape(tasks)}); "
            "left out of pass@k (column <code>unavailable</code>).</b></p>"
        )
    return note


def _write_tables(table: pd.DataFrame, out: Path, stem: str) -> None:
    import contextlib

    table.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")
    with contextlib.suppress(ImportError):  # parquet only where pyarrow is installed
        table.to_parquet(out / f"{stem}.parquet", index=False)


def _frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records)
    df["tokens_per_forward"] = df.new_tokens / df.forward_passes.where(df.forward_passes > 0)
    return df


def _run_figures(df: pd.DataFrame, table: pd.DataFrame, out: Path, prefix: str = "") -> list[Path | None]:
    return [
        plot_vs_k(df, "accept_rate", "accept rate (per generation)", out / f"{prefix}accept_rate_vs_k.png"),
        plot_vs_k(df, "tokens_per_s", "tokens/s (decode)", out / f"{prefix}tokens_per_s_vs_k.png"),
        plot_vs_k(df, "tokens_per_forward", "tokens per forward pass", out / f"{prefix}tokens_per_forward_vs_k.png"),
        plot_speedup(table, out / f"{prefix}speedup.png"),
    ]


def projection_table(
    records: list[dict], table: pd.DataFrame, probe_path: str, engine: str
) -> tuple[pd.DataFrame, str]:
    """The run's greedy acceptance projected onto a probe's cost curve, beside the speedup measured."""
    from harness.probe import project

    try:
        probe = json.loads(Path(probe_path).read_text())
        probe["engines"][engine]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise HarnessError(f"--probe: {probe_path} is not a probe.json with engine '{engine}'") from None
    rows = pd.DataFrame(project(records, probe, engine))
    title = (
        f"Projection onto {probe['shape']} on {probe['card']}, {probe['dtype']}, engine {engine} "
        "(cost from synthetic weights, acceptance from this run)"
    )
    if rows.empty:
        return rows, title
    greedy = table[table.temperature == 0][["task", "decoder", "k", "speedup"]]
    merged = rows.merge(greedy.rename(columns={"speedup": "measured_speedup"}), on=["task", "decoder", "k"], how="left")
    return merged, title


def render(
    run_dirs: list[str], out_dir: str | None = None, probe: str | None = None, probe_engine: str = "compile"
) -> Path:
    """One run: its summary, figures and report.html (into the run directory unless ``out_dir``).
    Several runs: each one's figures plus a side-by-side comparison with deltas against the first."""
    runs = {}
    for d in run_dirs:
        label = Path(d).resolve().name
        if label in runs:
            label = str(Path(d))
        runs[label] = RunDirectory(d).load()
    out = Path(out_dir or run_dirs[0])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"output directory '{out}' is not writable ({exc.strerror})") from None
    tables = {label: summarize(records) for label, (records, _) in runs.items()}
    sections: list[tuple[str, str]] = []
    if len(runs) == 1:
        (label, (records, info)), table = next(iter(runs.items())), next(iter(tables.values()))
        _write_tables(table, out, "summary")
        figures = _run_figures(_frame(records), table, out)
        sections.append(("Summary", _scoring_note(records) + _table_html(table)))
        if probe:
            projected, heading = projection_table(records, table, probe, probe_engine)
            _write_tables(projected, out, "projection")
            sections.append((heading, _table_html(projected)))
        sections.append(("Figures", "".join(_img(f) for f in figures)))
        sections.append(("Run", f"<pre>{html.escape(json.dumps(info, indent=1))}</pre>"))
        title = f"sdsat-bench: {label}"
    else:
        comparison = compare_runs(tables)
        _write_tables(comparison, out, "comparison")
        differ = config_differences({label: info for label, (_, info) in runs.items()})
        if differ:
            warning = f"runs differ in configuration ({', '.join(differ)}): deltas compare unlike settings"
            print(f"sdsat-bench: warning: {warning}", file=sys.stderr)
            sections.append(("Warning", f"<p><b>{html.escape(warning)}</b></p>"))
        sections.append((f"Comparison (Δ against {next(iter(runs))})", _table_html(comparison)))
        sections.append(("pass@k by run", _img(plot_pass_at_k(comparison, out / "pass_at_k.png"))))
        for i, (label, (records, info)) in enumerate(runs.items()):
            figures = _run_figures(_frame(records), tables[label], out, prefix=f"run{i}_")
            machine = info.get("machine", {})
            sections.append(
                (
                    f"Run {label}",
                    f"<p>model {html.escape(str(info.get('model_path')))}; "
                    f"{html.escape(str(machine.get('devices') or machine.get('platform')))}</p>"
                    + _table_html(tables[label])
                    + "".join(_img(f) for f in figures),
                )
            )
        title = "sdsat-bench: " + " vs ".join(runs)
    return write_html(out, title, sections)
