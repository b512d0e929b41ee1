"""The size series (issue 29): acceptance against parameters for models trained by one recipe.

Each point is a training work directory whose ``evaluate`` stage wrote ``eval.json`` (held-out
standard loss and parameters of base and SDSAT, greedy accept rate and tokens per forward pass of the
two-step decoder per k on HumanEval prompts and on generic code prompts). Points trained elsewhere
(a retrofit of a model pretrained at scale) are drawn apart and flagged in the table, never fitted
with the series. A point's greedy HumanEval run (``sdsat-bench run --model W/sdsat --tasks humaneval
--allow-code-execution``), named with ``--run LABEL=RUN``, adds its pass@1 (with its interval) and the
share of completions that repeat a line. ``sdsat-bench sizes`` writes ``size_series.csv`` (one row per
point, prompt set and k) and ``accept_rate_vs_size.png``.

Where a point's run also holds speculative decoders (``--decoders ar,sdsat,sdsat-fused``), its greedy
HumanEval acceptance is priced by the run itself (the speedup measured at the point's own size, on the
run's card) and on each ``--probe`` (a 7B or 13B shape's cost curve: the speedup that acceptance would
give there); where the point's work directory holds the probe of its own shape on the run's card
(``W/probe/probe.json``, or ``W/probe-*/`` for another card), on that one too, which shows how far a
projection misses where the speedup is also measured.
``size_projection.csv`` holds them and ``speedup_vs_size.png`` draws them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError

PROMPT_SETS = {"humaneval_greedy": "HumanEval", "heldout_greedy": "generic code (held out)"}
FIGURE_KS = (3, 5, 7)  # the paper's L = 5 (7B) and L = 7 (13B), and a shorter draft


def point_rows(label: str, work: str | Path, apart: bool = False) -> list[dict]:
    """One row per prompt set and k of the work directory's ``eval.json``."""
    path = Path(work) / "eval.json"
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{label}: no readable {path} ({type(exc).__name__}): run its evaluate stage") from None
    parameters = evaluation.get("parameters", {}).get("sdsat")
    if not parameters:
        raise HarnessError(f"{label}: {path} records no parameters (written before they were): evaluate again")
    base_loss = evaluation["base"]["heldout_standard_loss"]
    sdsat_loss = evaluation["sdsat"]["heldout_standard_loss"]
    common = {
        "model": label,
        "parameters": parameters,
        "pretrained_elsewhere": apart,
        "base_loss": base_loss,
        "sdsat_loss": sdsat_loss,
        "loss_change": sdsat_loss / base_loss - 1,
        "device": evaluation.get("device"),
    }
    rows = []
    for key, prompt_set in PROMPT_SETS.items():
        sweep = evaluation.get(key)
        if not sweep:
            continue
        for k, m in sweep["per_k"].items():
            if int(k) == 0:
                continue
            rows.append(
                {
                    **common,
                    "prompts": prompt_set,
                    "n_prompts": sweep["prompts"],
                    "k": int(k),
                    "accept_rate": m["accept_rate"],
                    "tokens_per_forward": m["tokens_per_forward"],
                }
            )
    return rows


RUN_COLUMNS = ("pass@1", "pass@1_lo", "pass@1_hi", "repeated_line_share")


def humaneval_greedy_rows(label: str, run: str | Path) -> pd.DataFrame:
    """The greedy HumanEval rows of a run's summary.csv, or one line saying it has none to read."""
    summary = Path(run) / "summary.csv"
    if not summary.exists():
        raise HarnessError(f"{label}: {summary} is missing (a run directory, scored and reported?)")
    table = pd.read_csv(summary)
    return table[(table["task"] == "humaneval") & (table["temperature"] == 0)]


def greedy_humaneval(label: str, run: str | Path) -> dict:
    """pass@1 and the repeated-line share of a run's greedy ``ar`` HumanEval row."""
    summary = Path(run) / "summary.csv"
    greedy = humaneval_greedy_rows(label, run)
    row = greedy[greedy["decoder"] == "ar"]
    if row.empty or "pass@1" not in row or pd.isna(row.iloc[0]["pass@1"]):  # unjudged: no pass@1 column
        raise HarnessError(
            f"{label}: {summary} has no scored greedy ar row on humaneval "
            f"(judge it with sdsat-bench score {run} --allow-code-execution)"
        )
    # a run of fewer problems than an interval needs has no pass@1_lo/_hi column
    return {column: row.iloc[0].get(column) for column in RUN_COLUMNS}


def size_table(
    series: list[tuple[str, str]], apart: list[tuple[str, str]] = (), runs: list[tuple[str, str]] = ()
) -> pd.DataFrame:
    """The series' points and those trained elsewhere, as ``size_series.csv`` holds them."""
    rows = [r for label, work in series for r in point_rows(label, work)]
    rows += [r for label, work in apart for r in point_rows(label, work, apart=True)]
    if not rows:
        raise HarnessError("sizes: no point has an accept-rate sweep in its eval.json")
    table = pd.DataFrame(rows)
    for label, run in runs:
        if label not in set(table["model"]):
            raise HarnessError(f"sizes: --run {label}=...: no point is labelled '{label}'")
        for column, value in greedy_humaneval(label, run).items():
            table.loc[table["model"] == label, column] = value
    return table.sort_values(["pretrained_elsewhere", "parameters", "prompts", "k"], ignore_index=True)


def plot_accept_rate_vs_size(table: pd.DataFrame, out: Path) -> Path:
    """Accept rate against parameters (log scale), a panel per prompt set, a line per k; points trained
    elsewhere as lone markers of the same colour."""
    from harness.figures import grid, save

    sets = [s for s in PROMPT_SETS.values() if s in set(table["prompts"])]
    fig, axes = grid(len(sets), columns=2)
    colors = {k: f"C{i}" for i, k in enumerate(FIGURE_KS)}
    for ax, prompt_set in zip(axes, sets, strict=True):
        rows = table[(table["prompts"] == prompt_set) & table["k"].isin(FIGURE_KS)]
        for k in FIGURE_KS:
            series = rows[(rows["k"] == k) & ~rows["pretrained_elsewhere"]].sort_values("parameters")
            ax.plot(series["parameters"], series["accept_rate"], "o-", color=colors[k], label=f"k={k}, one recipe")
            for _, point in rows[(rows["k"] == k) & rows["pretrained_elsewhere"]].iterrows():
                label = f"k={k}, pretrained elsewhere"
                ax.plot(point["parameters"], point["accept_rate"], "D", color=colors[k], mfc="none", label=label)
                if k == FIGURE_KS[0]:  # the name once, above the point's markers
                    xy = (point["parameters"], point["accept_rate"])
                    ax.annotate(point["model"], xy, xytext=(0, 8), textcoords="offset points", ha="center", fontsize=7)
        # One parameter axis on every panel, so that a point missing from one set (a retrofit evaluated
        # before the generic prompts existed) does not shift its axis against the other's.
        parameter_axis(ax, table["parameters"])
        ax.set_ylim(0, 1)
        ax.set_ylabel("greedy accept rate (sdsat)")
        ax.set_title(prompt_set, fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, out)


def parameter_axis(ax, parameters: pd.Series) -> None:
    """A log parameter axis ticked at the points' own sizes ("13.7M"): a series spans one or two decades,
    where matplotlib's minor log labels run into each other."""
    from matplotlib.ticker import NullFormatter

    sizes = sorted(set(parameters))
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n / 1e6:.3g}M" for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
    ax.set_xlabel("parameters")


MEASURED = "measured (own size)"
OWN_PROBE = "projected (own size's probe)"  # beside MEASURED: how far the projection misses at a known shape
SPECULATIVE = ("sdsat", "sdsat-fused")  # SDSAT's own decoders: what the series asks of each size


def own_probe(work: str | Path, card: str) -> Path | None:
    """The point's probe of its own shape on ``card`` (``scripts/size_series.sh`` writes ``W/SIZE/probe``;
    a probe of the same shape on another card sits beside it as ``W/SIZE/probe-*``): a projection checked
    against a speedup measured on one card must be priced on that card's costs."""
    for path in sorted(Path(work).glob("probe*/probe.json")):
        if json.loads(path.read_text()).get("card") == card:
            return path
    return None


def run_card(info: dict) -> str:
    """The card a run's speeds were measured on, as its provenance (``run.json``) names it; "cpu" without."""
    return ", ".join(info.get("machine", {}).get("devices") or []) or "cpu"


def projection_table(
    table: pd.DataFrame,
    runs: list[tuple[str, str]],
    probes: list[tuple[str, str]],
    engine: str = "compile",
    works: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Per point with a run of speculative decoders: each decoder's greedy HumanEval speedup at each k,
    measured by the run (``onto`` = MEASURED), projected onto each probe (``onto`` = its label) and, where
    the point's work directory in ``works`` holds a probe of its own shape on the run's card, onto that
    one (``onto`` = OWN_PROBE): beside the measured speedup, the projection's own error."""
    from harness.probe import load_probe, project
    from harness.results import RunDirectory

    loaded = [(label, load_probe(path, engine)) for label, path in probes]
    works = works or {}
    points = table.drop_duplicates("model").set_index("model")
    rows = []
    for label, run in runs:
        point = points.loc[label]
        common = {
            "model": label,
            "parameters": point["parameters"],
            "pretrained_elsewhere": point["pretrained_elsewhere"],
        }
        records, info = RunDirectory(run).load()
        card = run_card(info)
        measured = humaneval_greedy_rows(label, run)
        for _, row in measured[measured["decoder"].isin(SPECULATIVE)].iterrows():
            rows.append(
                {
                    **common,
                    "decoder": row["decoder"],
                    "k": row["k"],
                    "onto": MEASURED,
                    "card": card,
                    "speedup": row["speedup"],
                }
            )
        humaneval = [r for r in records if r["task"] == "humaneval"]  # project() keeps the greedy ones
        own = own_probe(works[label], card) if label in works else None
        onto_probes = loaded + ([(OWN_PROBE, load_probe(own, engine))] if own else [])
        for onto, probe in onto_probes:
            for p in project(humaneval, probe, engine):
                if p["decoder"] in SPECULATIVE:
                    rows.append(
                        {
                            **common,
                            "decoder": p["decoder"],
                            "k": p["k"],
                            "onto": onto,
                            "card": probe["card"],
                            "speedup": p["projected_speedup"],
                        }
                    )
    columns = ["model", "parameters", "pretrained_elsewhere", "decoder", "k", "onto", "card", "speedup"]
    return pd.DataFrame(rows, columns=columns)


def plot_speedup_vs_size(projection: pd.DataFrame, out: Path) -> Path:
    """Each point's speedup at its best k against parameters, measured and projected, a panel per
    decoder; points trained elsewhere as lone open markers."""
    from harness.figures import grid, save

    decoders = [d for d in SPECULATIVE if d in set(projection["decoder"])]
    fig, axes = grid(len(decoders), columns=2)
    targets = list(dict.fromkeys(projection["onto"]))
    colors = {onto: f"C{i}" for i, onto in enumerate(targets)}
    for ax, decoder in zip(axes, decoders, strict=True):
        rows = projection[projection["decoder"] == decoder]
        best = rows.loc[rows.groupby(["model", "onto"])["speedup"].idxmax()]
        for onto in targets:
            line = best[(best["onto"] == onto) & ~best["pretrained_elsewhere"]].sort_values("parameters")
            ax.plot(line["parameters"], line["speedup"], "o-", color=colors[onto], label=f"{onto}: {cards(line)}")
            for _, point in line.iterrows():
                xy = (point["parameters"], point["speedup"])
                ax.annotate(f"k={point['k']}", xy, xytext=(0, 5), textcoords="offset points", ha="center", fontsize=6)
            apart = best[(best["onto"] == onto) & best["pretrained_elsewhere"]]
            if len(apart):
                label = f"{onto}, pretrained elsewhere"
                ax.plot(apart["parameters"], apart["speedup"], "D", color=colors[onto], mfc="none", label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        parameter_axis(ax, projection["parameters"])
        ax.set_ylabel("HumanEval speedup over AR (best k)")
        ax.set_title(decoder, fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, out)


def cards(rows: pd.DataFrame) -> str:
    """The cards a line's points were measured or priced on, for its legend: a series whose points came
    from different lent cards says so where it is drawn."""
    names = dict.fromkeys(card.removeprefix("NVIDIA ") for card in rows["card"])
    return " / ".join(names)


def write_size_series(
    series: list[tuple[str, str]],
    apart: list[tuple[str, str]],
    out: str | Path,
    runs: list[tuple[str, str]] = (),
    probes: list[tuple[str, str]] = (),
    engine: str = "compile",
) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = size_table(series, apart, runs)
    csv = out / "size_series.csv"
    table.to_csv(csv, index=False, float_format="%.4f")
    written = [csv, plot_accept_rate_vs_size(table, out / "accept_rate_vs_size.png")]
    works = dict([*series, *apart])
    projection = projection_table(table, runs, probes, engine, works)
    if len(projection):
        projection.to_csv(out / "size_projection.csv", index=False, float_format="%.4f")
        written += [out / "size_projection.csv", plot_speedup_vs_size(projection, out / "speedup_vs_size.png")]
    return written


def labelled(items: list[str]) -> list[tuple[str, str]]:
    """``LABEL=DIR`` or ``DIR`` (labelled by its name) arguments."""
    pairs = []
    for item in items:
        label, sep, work = item.partition("=")
        pairs.append((label, work) if sep else (Path(item).name, item))
    return pairs
