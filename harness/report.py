"""Reports rendered from results alone: summary tables, the paper's figures (matplotlib) and one
self-contained ``report.html``; several runs side by side with deltas against the first."""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

import pandas as pd

from harness.check import incomplete
from harness.decoding import is_control
from harness.errors import HarnessError
from harness.figures import plot_pass_at_k, plot_speedup, plot_vs_k
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
    intervals = [c for m in metrics for c in (f"{m}_lo", f"{m}_hi") if c in stacked.columns]
    return stacked[["run", *GROUP, *[c for m in metrics for c in (m, f"Δ {m}")], *intervals]]


def _img(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"></figure>'


def _table_html(df: pd.DataFrame) -> str:
    """A table that scrolls inside the page's width instead of widening it."""
    table = df.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="", border=0, classes="t")
    return f'<div class="w">{table}</div>'


def _summary_html(table: pd.DataFrame) -> str:
    """The summary as a page shows it: the compact columns with their intervals, each configuration a
    short label explained under the table (summary.csv has every column and the full text)."""
    cols = []
    for c in [*COMPACT[:6], "pass@10", *COMPACT[6:]]:  # each metric followed by its interval
        cols += [x for x in (c, f"{c}_lo", f"{c}_hi") if x in table.columns]
    view = table[list(dict.fromkeys(cols))].copy()
    legend = ""
    if "configuration" in table.columns and table.configuration.any():
        labels = {c: f"C{i + 1}" for i, c in enumerate(dict.fromkeys(table.configuration.fillna("")))}
        view.insert(2, "configuration", table.configuration.fillna("").map(labels))
        legend = (
            "<ul>"
            + "".join(f"<li><b>{label}</b>: {html.escape(text) or '(none)'}</li>" for text, label in labels.items())
            + "</ul>"
        )
    return _table_html(view) + legend + "<p>Every column: summary.csv / summary.md.</p>"


def write_html(out: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:2px 6px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}pre{background:#f5f5f5;"
        "padding:.5em;overflow-x:auto;font-size:12px}div.w{overflow-x:auto}table.t td{white-space:nowrap}"
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
    "noisy",
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
    controlled = {r["task"] for r in records if is_control(r.get("decoder", ""))}
    uncontrolled = sorted({r["task"] for r in records} - controlled) if controlled else []
    if uncontrolled:
        note += (
            f"<p>no reference control on {html.escape(', '.join(uncontrolled))}: the dataset has no "
            "reference solutions (MultiPL-E gives prompts and tests only)</p>"
        )
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


def _run_figures(
    df: pd.DataFrame, table: pd.DataFrame, out: Path, prefix: str = "", svg: bool = False
) -> list[Path | None]:
    return [
        plot_vs_k(df, "accept_rate", "accept rate (per generation)", out / f"{prefix}accept_rate_vs_k.png", svg=svg),
        plot_vs_k(df, "tokens_per_s", "tokens/s (decode)", out / f"{prefix}tokens_per_s_vs_k.png", table, svg),
        plot_vs_k(
            df, "tokens_per_forward", "tokens per forward pass", out / f"{prefix}tokens_per_forward_vs_k.png", svg=svg
        ),
        plot_speedup(table, out / f"{prefix}speedup.png", svg),
    ]


def projection_table(
    records: list[dict], table: pd.DataFrame, probe_path: str, engine: str
) -> tuple[pd.DataFrame, str]:
    """The run's greedy acceptance projected onto a probe's cost curve, beside the speedup measured."""
    from harness.probe import load_probe, project

    probe = load_probe(probe_path, engine)
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


def _incomplete_warnings(runs: dict) -> list[tuple[str, str]]:
    """A run cut short is said so, on the terminal and at the top of the page."""
    sections = []
    for label, (records, info) in runs.items():
        cut = incomplete(records, info)
        if cut:
            print(f"sdsat-bench: warning: {label}: {cut}", file=sys.stderr)
            sections.append(("Warning", f"<p><b>{html.escape(label)}: {html.escape(cut)}</b></p>"))
    return sections


def _comparison_sections(runs: dict, tables: dict[str, pd.DataFrame], out: Path, svg: bool) -> list[tuple[str, str]]:
    """Several runs: comparison.{csv,md} with deltas against the first, summary.{csv,md} stacking every
    run's rows, and the page's sections (a warning where their settings differ, each run's figures)."""
    sections: list[tuple[str, str]] = []
    comparison = compare_runs(tables)
    _write_tables(comparison, out, "comparison")
    # Every column of every run in one table: runs on different models (a base's frozen-base peers
    # beside its SDSAT fine-tune's decoders) read as one summary, each row saying its run and model.
    models = {label: str(info.get("model_path")) for label, (_, info) in runs.items()}
    stacked = pd.concat([t.assign(run=label, model=models[label]) for label, t in tables.items()], ignore_index=True)
    _write_tables(stacked[["run", "model", *(c for c in stacked.columns if c not in ("run", "model"))]], out, "summary")
    differ = config_differences({label: info for label, (_, info) in runs.items()})
    if differ:
        warning = f"runs differ in configuration ({', '.join(differ)}): deltas compare unlike settings"
        print(f"sdsat-bench: warning: {warning}", file=sys.stderr)
        sections.append(("Warning", f"<p><b>{html.escape(warning)}</b></p>"))
    sections.append((f"Comparison (Δ against {next(iter(runs))})", _table_html(comparison)))
    sections.append(("pass@k by run", _img(plot_pass_at_k(comparison, out / "pass_at_k.png", svg))))
    for i, (label, (records, info)) in enumerate(runs.items()):
        figures = _run_figures(_frame(records), tables[label], out, prefix=f"run{i}_", svg=svg)
        machine = info.get("machine", {})
        sections.append(
            (
                f"Run {label}",
                f"<p>model {html.escape(str(info.get('model_path')))}; "
                f"{html.escape(str(machine.get('devices') or machine.get('platform')))}</p>"
                + _summary_html(tables[label])
                + "".join(_img(f) for f in figures),
            )
        )
    return sections


def render(
    run_dirs: list[str],
    out_dir: str | None = None,
    probe: str | None = None,
    probe_engine: str = "compile",
    svg: bool = False,
) -> Path:
    """One run: its summary, figures and report.html (into the run directory unless ``out_dir``).
    Several runs: each one's figures, a side-by-side comparison with deltas against the first, and
    summary.csv stacking every run's rows (columns ``run`` and ``model``).
    ``svg``: every figure also as SVG, for papers."""
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
    sections += _incomplete_warnings(runs)
    if len(runs) == 1:
        (label, (records, info)), table = next(iter(runs.items())), next(iter(tables.values()))
        _write_tables(table, out, "summary")
        figures = _run_figures(_frame(records), table, out, svg=svg)
        sections.append(("Summary", _scoring_note(records) + _summary_html(table)))
        if probe:
            projected, heading = projection_table(records, table, probe, probe_engine)
            _write_tables(projected, out, "projection")
            sections.append((heading, _table_html(projected)))
        sections.append(("Figures", "".join(_img(f) for f in figures)))
        sections.append(("Run", f"<pre>{html.escape(json.dumps(info, indent=1))}</pre>"))
        title = f"sdsat-bench: {label}"
    else:
        sections += _comparison_sections(runs, tables, out, svg)
        title = "sdsat-bench: " + " vs ".join(runs)
    return write_html(out, title, sections)
