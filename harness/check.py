"""The CI gate: a run's metrics against a committed baseline, each with its own tolerance.

Machine-independent metrics (tokens per forward pass, accept rate, share identical to AR, pass@k)
and speed *ratios* measured inside the one run (sdsat vs ar tokens/s) are gated; absolute timings
never are, since they belong to a machine. A speed ratio is pooled over every problem of every task
(``all-tasks``); the baseline keeps each task's share, so that a run of fewer tasks is compared over
the tasks both have, never its HumanEval alone against a five-task pool.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.metrics import NOISY_MARGIN

NOISY_NOTE = (
    f"timed while the machine was busy (less CPU time per wall second than the run's median, by {NOISY_MARGIN:.0%}+)"
)

# metric -> (kind, default tolerance): "rel" tolerances are fractions of the baseline value.
GATED = {
    "tokens_per_forward": ("rel", 0.05),
    "accept_rate_pooled": ("abs", 0.03),
    "identical_to_ar": ("abs", 0.0),
    "pass@1": ("abs", 0.05),
    "pass@10": ("abs", 0.05),
    "speedup": ("rel", 0.30),  # a ratio measured in one process run: CPU noise needs room
}


@dataclass
class MetricResult:
    """One gated metric against its baseline (not a program's verdict: that is sandbox.Verdict)."""

    metric: str
    baseline: float
    value: float | None
    tolerance: str
    ok: bool
    comparable: bool = True  # False: the baseline cannot be set against this run (not gated, not failed)

    def line(self) -> str:
        value = "missing" if self.value is None else f"{self.value:.4f}"
        tag = "ok  " if self.ok else "FAIL"
        tag = tag if self.comparable else "skip"
        return f"{tag}  {self.metric:<70} {self.baseline:>8.4f} {value:>8}  {self.tolerance}"


def metric_key(row, metric: str) -> str:
    """A stable name for one metric of one summary row."""
    parts = [row["task"], row["decoder"], f"k={row['k']}"]
    if row["temperature"] > 0:
        parts += [f"T={row['temperature']:g}", f"top_p={row['top_p']:g}", f"accept={row['accept']}"]
    return "/".join(parts) + f":{metric}"


def current_metrics(records: list[dict], shares: dict | None = None) -> dict[str, float]:
    """Per task: the machine-independent metrics. Speed: the paired speedup over AR pooled over every
    problem of every task (``all-tasks``), since a handful of problems per task is too noisy to gate
    (``shares``: speed_shares(records), where the caller has them already)."""
    from harness.metrics import summarize

    if shares is None:
        shares = speed_shares(records)
    values = {}
    for _, row in summarize(records).iterrows():
        for metric in (m for m in GATED if m != "speedup"):
            v = row.get(metric)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                values[metric_key(row, metric)] = float(v)
    for metric, tasks in shares.items():
        values[metric] = pooled(tasks)
    return values


def speed_shares(records: list[dict]) -> dict[str, dict[str, tuple[float, int]]]:
    """Per all-tasks speed metric, each task's share of the pool: (sum over its problems of the mean
    log speed ratio over AR, number of problems)."""
    import pandas as pd

    from harness.metrics import GROUP, ar_speeds, log_speed_ratios, mark_noisy

    df = mark_noisy(pd.DataFrame(records))
    if df.empty or "tokens_per_s" not in df:
        return {}
    # A noisy record says how busy the machine was, not how fast its decoder is: its problem leaves the
    # gate (the AR record it is paired with too).
    noisy = _noisy_keys(df)
    df = df[[(t, p) not in noisy for t, p in zip(df.task, df.problem_id, strict=True)]]
    ar = ar_speeds(df)
    shares: dict[str, dict[str, tuple[float, int]]] = {}
    for key, g in df[df.decoder != "ar"].groupby(GROUP, dropna=False, sort=True):
        row = dict(zip(GROUP, key, strict=True))
        logs = log_speed_ratios(g, ar)
        if logs:
            metric = metric_key({**row, "task": "all-tasks"}, "speedup")
            shares.setdefault(metric, {})[row["task"]] = (float(sum(logs)), len(logs))
    return shares


def pooled(shares: dict[str, tuple[float, int]], tasks=None) -> float:
    """The geometric mean speedup over the problems of ``tasks`` (default: every task of ``shares``)."""
    parts = [v for t, v in shares.items() if tasks is None or t in tasks]
    return math.exp(sum(log_sum for log_sum, _ in parts) / sum(n for _, n in parts))


def _tolerance(metric: str, entry: dict) -> tuple[str, float]:
    kind, default = GATED[metric.rsplit(":", 1)[1]]
    return entry.get("kind", kind), float(entry.get("tolerance", default))


def gate(baseline: dict, values: dict[str, float], shares: dict | None = None) -> list[MetricResult]:
    """Every metric is 'higher is better': a value may fall below its baseline by its tolerance. A
    pooled speed metric whose baseline keeps its tasks' shares is compared over the tasks both the
    baseline and the run have (``shares``: the run's, from speed_shares); one whose baseline predates
    the shares and pooled other tasks than the run has is not comparable, and says so."""
    pooled_tasks = set(((baseline.get("source") or {}).get("config") or {}).get("tasks") or ())
    return [
        _verdict(metric, entry, values.get(metric), (shares or {}).get(metric), pooled_tasks)
        for metric, entry in sorted(baseline["metrics"].items())
    ]


def _verdict(metric: str, entry: dict, value: float | None, mine: dict | None, pooled_tasks: set) -> MetricResult:
    """One baseline entry against the run's value (``mine``: the run's task shares of a pooled speedup)."""
    kind, tol = _tolerance(metric, entry)
    base = float(entry["value"])
    text = f"-{tol:.0%}" if kind == "rel" else f"-{tol:g}"
    theirs = entry.get("tasks")
    if mine and theirs and set(mine) != set(theirs):
        common = set(mine) & set(theirs)
        base_shares = {t: tuple(v) for t, v in theirs.items()}
        base, value = (pooled(base_shares, common), pooled(mine, common)) if common else (base, None)
        text += f" (over {', '.join(sorted(common)) or 'no common task'})"
    elif mine and not theirs and pooled_tasks and not pooled_tasks <= set(mine):
        text += " (not comparable: the baseline pools tasks this run lacks and keeps no per-task shares)"
        return MetricResult(metric, base, value, text, ok=True, comparable=False)
    floor = base * (1 - tol) if kind == "rel" else base - tol
    return MetricResult(metric, base, value, text, value is not None and value >= floor - 1e-12)


def read_baseline(path: Path) -> dict:
    try:
        baseline = json.loads(path.read_text())
        metrics = baseline["metrics"]
        metrics.items()
    except FileNotFoundError:
        raise HarnessError(f"baseline '{path}' does not exist (create it with --update-baseline)") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise HarnessError(f"baseline '{path}' is not a baseline file (expected JSON with 'metrics')") from None
    for metric, entry in metrics.items():
        _check_entry(path, metric, entry)
    return baseline


def _share_ok(share) -> bool:
    """[sum of log ratios, problems]: a task's share of a pooled speedup."""
    return (
        isinstance(share, list) and len(share) == 2 and isinstance(share[0], int | float) and isinstance(share[1], int)
    )


def _check_entry(path: Path, metric: str, entry) -> None:
    """One baseline entry: TASK/DECODER/k=K:METRIC with a numeric value, kind, tolerance and task shares."""
    name = metric.rsplit(":", 1)[-1]
    value = entry.get("value") if isinstance(entry, dict) else None
    if ":" not in metric or name not in GATED or isinstance(value, bool) or not isinstance(value, int | float):
        raise HarnessError(
            f"baseline '{path}': malformed entry '{metric}' (expected TASK/DECODER/k=K:METRIC "
            f"with one of {', '.join(GATED)} and a numeric 'value')"
        )
    if entry.get("kind", "abs") not in ("abs", "rel") or not isinstance(entry.get("tolerance", 0), int | float):
        raise HarnessError(f"baseline '{path}': entry '{metric}' has a malformed kind or tolerance")
    shares = entry.get("tasks", {})
    if not isinstance(shares, dict) or not all(_share_ok(v) and v[1] > 0 for v in shares.values()):
        raise HarnessError(f"baseline '{path}': entry '{metric}' has malformed task shares")


def exactness_failures(records: list[dict], info: dict) -> list[str]:
    """Greedy outputs that fail the gate whatever the baseline: a mismatch with AR in any dtype (a bug,
    not rounding: harness.exactness), and in fp32/fp64 any divergence at all."""
    strict = (info.get("config") or {}).get("dtype", "fp32") in ("fp32", "fp64")
    bad = ("numerical", "mismatch") if strict else ("mismatch",)
    lines = []
    for cls in bad:
        hits = [r for r in records if r.get("exactness") == cls]
        if hits:
            where = ", ".join(sorted({f"{r['task']}/{r['decoder']}/k={r['k']}" for r in hits}))
            lines.append(
                f"{len(hits)} greedy outputs diverge from AR ({cls}"
                + (", in an exact dtype" if strict and cls == "numerical" else "")
                + f"): {where}"
            )
    return lines


def absent_tasks(baseline: dict, records: list[dict]) -> list[str]:
    """Tasks the baseline gates that the run has no record of (e.g. a run without --data-dir)."""
    present = {r["task"] for r in records}
    gated = {metric.split("/", 1)[0] for metric in baseline["metrics"]} - {"all-tasks"}
    return sorted(gated - present)


def noisy_problems(records: list[dict]) -> tuple[int, int]:
    """(problems with a noisy record, problems): what the speed gate left out, of how many."""
    import pandas as pd

    from harness.metrics import mark_noisy

    df = mark_noisy(pd.DataFrame(records))
    if df.empty:
        return 0, 0
    return len(_noisy_keys(df)), len(set(zip(df.task, df.problem_id, strict=True)))


def _noisy_keys(df) -> set[tuple[str, str]]:
    """(task, problem_id) of every problem with a noisy record (``df`` from mark_noisy)."""
    return set(zip(df.task[df.noisy], df.problem_id[df.noisy], strict=True))


def busy_run(records: list[dict], info: dict) -> str | None:
    """A CPU run whose median record got 25%+ less CPU time per wall second than its torch threads
    could use: the whole run shared the machine (the per-record flag, relative to the run's median,
    cannot see a load that lasted throughout)."""
    machine = info.get("machine") or {}
    threads = machine.get("torch_threads") if isinstance(machine, dict) else None
    if (info.get("config") or {}).get("device", "cpu") != "cpu" or not threads:
        return None
    import pandas as pd

    from harness.metrics import cpu_shares

    median = cpu_shares(pd.DataFrame(records)).median()
    if pd.isna(median) or median >= threads * (1 - NOISY_MARGIN):
        return None
    return (
        f"the whole run shared its machine: a record got {median:.2f} CPU-seconds per second of {threads} "
        "threads (median); its speed ratios are paired, its absolute timings are not this machine's"
    )


def unmeasured_speedups(verdicts: list[MetricResult], noisy: int) -> list[MetricResult]:
    """Speed verdicts without a value because every problem was noisy (``noisy``: how many problems
    were): not measured, not regressed."""
    if not noisy:
        return []
    return [v for v in verdicts if not v.ok and v.value is None and v.metric.endswith(":speedup")]


def speed_notes(records: list[dict], info: dict, noisy: int, problems: int) -> list[str]:
    """What the gate says of the machine: problems left out as noisy, a run that shared it throughout."""
    notes = [f"{noisy} of {problems} problems {NOISY_NOTE}: left out of the speed gate"] if noisy else []
    shared = busy_run(records, info)
    return notes + ([f"note: {shared}"] if shared else [])


def incomplete(records: list[dict], info: dict) -> str | None:
    """'incomplete run (4 of 12 units)' when the run stopped before its plan's end, else None."""
    planned = info.get("units")
    if planned and len(records) < planned:
        return f"incomplete run ({len(records)} of {planned} units): finish it with run --resume"
    return None


def write_baseline(
    path: Path, values: dict[str, float], previous: dict | None, source: dict, shares: dict | None = None
) -> None:
    """Current values become the baseline; tolerances already chosen in the file are kept; a pooled
    speed metric keeps its tasks' shares."""
    old = (previous or {}).get("metrics", {})
    metrics = {}
    for metric, value in sorted(values.items()):
        kind, tol = _tolerance(metric, old.get(metric, {}))
        metrics[metric] = {"value": round(value, 6), "kind": kind, "tolerance": tol}
        if metric in (shares or {}):
            metrics[metric]["tasks"] = {t: [round(log_sum, 6), n] for t, (log_sum, n) in sorted(shares[metric].items())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"source": source, "metrics": metrics}, indent=1) + "\n")
    except OSError as exc:
        raise HarnessError(f"cannot write baseline '{path}' ({exc.strerror})") from None


def gate_run(baseline: dict, values: dict, records: list[dict], info: dict, shares: dict | None = None) -> list[str]:
    """`check`'s verdict on a run: print every gated metric against the baseline; return what fails,
    one line each (regressions, speedups a busy machine left unmeasured, a cut run, absent tasks,
    unscored records, exactness). ``shares``: the run's speed_shares, where the caller has them already."""
    absent = absent_tasks(baseline, records)
    shares = speed_shares(records) if shares is None else shares
    verdicts = [v for v in gate(baseline, values, shares) if v.metric.split("/", 1)[0] not in absent]
    print(f"      {'metric':<70} {'baseline':>8} {'value':>8}  tolerance")
    for v in verdicts:
        print(v.line())
    noisy, problems = noisy_problems(records)
    unmeasured = unmeasured_speedups(verdicts, noisy)  # a busy machine, not a regression
    failed = sum(not v.ok for v in verdicts) - len(unmeasured)
    skipped = sum(not v.comparable for v in verdicts)
    print(
        f"{len(verdicts) - failed - len(unmeasured) - skipped}/{len(verdicts)} metrics within tolerance"
        + (f"; {failed} regressed" if failed else "")
        + (f"; {len(unmeasured)} not measured" if unmeasured else "")
        + (f"; {skipped} not comparable (remake the baseline with --update-baseline to gate them)" if skipped else "")
    )
    for line in speed_notes(records, info, noisy, problems):
        print(line)
    failures = [f"{failed} metrics regressed"] if failed else []
    if unmeasured:
        failures.append(f"{len(unmeasured)} speedups not measured: every problem was noisy, {NOISY_NOTE}")
    return failures + run_failures(records, info, absent)


def run_failures(records: list[dict], info: dict, absent: list[str]) -> list[str]:
    """What fails a run apart from its metrics: cut short, tasks absent, records unscored, exactness."""
    cut = incomplete(records, info)
    failures = [cut] if cut else []  # its metrics describe part of the plan: not a regression, not a pass
    if absent:
        why = "the run had no --data-dir; " if not info.get("data_dir") else ""
        failures.append(
            f"{len(absent)} tasks of the baseline are absent from this run ({why}not gated): " + ", ".join(absent)
        )
    unscored = sorted({r["task"] for r in records if r.get("status") == "unavailable"})
    if unscored:
        count = sum(r.get("status") == "unavailable" for r in records)
        failures.append(f"{count} records unscored (toolchain unavailable): {', '.join(unscored)}")
    return failures + exactness_failures(records, info)
