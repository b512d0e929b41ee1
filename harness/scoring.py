"""Judging completions: test execution in the sandbox, or exact match (SantaCoder FIM); and the
`validate` check that references pass and deliberately wrong solutions fail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from harness.execution.languages import get_language
from harness.execution.sandbox import Limits, Verdict, isolation_level, run_program
from harness.tasks import Problem, exact_match, get_task, program, wrong_completion


def judge(problem: Problem, completion: str, limits: Limits | None = None) -> Verdict:
    if get_task(problem.task).scoring == "exact-match":
        status = "passed" if exact_match(problem, completion) else "failed"
        return Verdict(status, None, 0.0, "", "none (exact match)")
    return run_program(get_language(problem.language), program(problem, completion), limits)


def judge_many(items: Sequence[tuple[Problem, str]], workers: int = 2, limits: Limits | None = None,
               progress: Callable[[int], None] | None = None) -> list[Verdict]:  # fmt: skip
    """Judge (problem, completion) pairs in parallel worker threads (each runs its own sandbox)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(judge, p, c, limits) for p, c in items]
        out = []
        for f in futures:
            out.append(f.result())
            if progress:
                progress(1)
        return out


def validate(problems: Sequence[Problem], workers: int = 2, limits: Limits | None = None, progress=None) -> dict:
    """References must pass, the deliberately wrong completion must fail, for every problem."""
    with_ref = [p for p in problems if p.reference is not None]
    wrong = "" if problems and get_task(problems[0].task).scoring == "exact-match" else None
    ref_verdicts = judge_many([(p, p.reference) for p in with_ref], workers, limits, progress)
    wrong_items = [(p, wrong if wrong is not None else wrong_completion(p.language)) for p in problems]
    wrong_verdicts = judge_many(wrong_items, workers, limits, progress)
    failed_refs = [(p.problem_id, v.status, v.stderr[-300:]) for p, v in zip(with_ref, ref_verdicts, strict=True)
                   if v.status != "passed"]  # fmt: skip
    passed_wrong = [p.problem_id for p, v in zip(problems, wrong_verdicts, strict=True) if v.status == "passed"]
    return {
        "problems": len(problems),
        "references": len(with_ref),
        "references_passed": len(with_ref) - len(failed_refs),
        "reference_failures": failed_refs,
        "wrong_passed": passed_wrong,
        "wrong_statuses": dict(Counter(v.status for v in wrong_verdicts)),
        "unavailable": sum(v.status == "unavailable" for v in ref_verdicts + wrong_verdicts),
        "isolation": isolation_level(),
        "ok": not failed_refs and not passed_wrong,
    }
