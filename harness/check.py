"""The CI gate: a run's metrics against a committed baseline, each with its own tolerance.

Machine-independent metrics (tokens per forward pass, accept rate, share identical to AR, pass@k)
and speed *ratios* measured inside the one run (sdsat vs ar tokens/s) are gated; absolute timings
never are, since they belong to a machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

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

    def line(self) -> str:
        value = "missing" if self.value is None else f"{self.value:.4f}"
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.metric:<70} {self.baseline:>8.4f} {value:>8}  {self.tolerance}"


def metric_key(row, metric: str) -> str:
    """A stable name for one metric of one summary row."""
    parts = [row["task"], row["decoder"], f"k={row['k']}"]
    if row["temperature"] > 0:
        parts += [f"T={row['temperature']:g}", f"top_p={row['top_p']:g}", f"accept={row['accept']}"]
    return "/".join(parts) + f":{metric}"


def current_metrics(records: list[dict]) -> dict[str, float]:
    """Per task: the machine-independent metrics. Speed: the paired speedup over AR pooled over every
    problem of every task (``all-tasks``), since a handful of problems per task is too noisy to gate."""
    from harness.metrics import summarize

    pooled = [{**r, "task": "all-tasks", "problem_id": f"{r['task']}/{r['problem_id']}"} for r in records]
    values = {}
    for table, metrics in (
        (summarize(records), [m for m in GATED if m != "speedup"]),
        (summarize(pooled), ["speedup"]),
    ):
        for _, row in table.iterrows():
            for metric in metrics:
                v = row.get(metric)
                if row["decoder"] == "ar" and metric == "speedup":
                    continue  # AR over AR is 1 by construction
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    values[metric_key(row, metric)] = float(v)
    return values


def _tolerance(metric: str, entry: dict) -> tuple[str, float]:
    kind, default = GATED[metric.rsplit(":", 1)[1]]
    return entry.get("kind", kind), float(entry.get("tolerance", default))


def gate(baseline: dict, values: dict[str, float]) -> list[MetricResult]:
    """Every metric is 'higher is better': a value may fall below its baseline by its tolerance."""
    verdicts = []
    for metric, entry in sorted(baseline["metrics"].items()):
        kind, tol = _tolerance(metric, entry)
        base = float(entry["value"])
        floor = base * (1 - tol) if kind == "rel" else base - tol
        value = values.get(metric)
        text = f"-{tol:.0%}" if kind == "rel" else f"-{tol:g}"
        verdicts.append(MetricResult(metric, base, value, text, value is not None and value >= floor - 1e-12))
    return verdicts


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
        name = metric.rsplit(":", 1)[-1]
        value = entry.get("value") if isinstance(entry, dict) else None
        if ":" not in metric or name not in GATED or isinstance(value, bool) or not isinstance(value, int | float):
            raise HarnessError(
                f"baseline '{path}': malformed entry '{metric}' (expected TASK/DECODER/k=K:METRIC "
                f"with one of {', '.join(GATED)} and a numeric 'value')"
            )
        if entry.get("kind", "abs") not in ("abs", "rel") or not isinstance(entry.get("tolerance", 0), int | float):
            raise HarnessError(f"baseline '{path}': entry '{metric}' has a malformed kind or tolerance")
    return baseline


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


def write_baseline(path: Path, values: dict[str, float], previous: dict | None, source: dict) -> None:
    """Current values become the baseline; tolerances already chosen in the file are kept."""
    old = (previous or {}).get("metrics", {})
    metrics = {}
    for metric, value in sorted(values.items()):
        kind, tol = _tolerance(metric, old.get(metric, {}))
        metrics[metric] = {"value": round(value, 6), "kind": kind, "tolerance": tol}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"source": source, "metrics": metrics}, indent=1) + "\n")
    except OSError as exc:
        raise HarnessError(f"cannot write baseline '{path}' ({exc.strerror})") from None
