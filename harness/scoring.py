"""Judging completions: test execution in the sandbox (a pass needs proof that the tests ran to
their end), or exact match (SantaCoder FIM); and the `validate` check that references pass while
deliberately wrong solutions and early-exit cheats fail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from harness.errors import HarnessError
from harness.execution.languages import get_language
from harness.execution.sandbox import Limits, Verdict, isolation_level, run_tests
from harness.tasks import Problem, get_task

EXACT_MATCH = "none (exact match)"


def program_head(problem: Problem, completion: str) -> str:
    """What precedes the tests in the judged program: prompt + completion (+ suffix, for infilling).
    The language's rules add the newline, the tests and the proof that they ran (execution.languages)."""
    return problem.prompt + completion + (problem.suffix or "")


def exact_match(problem: Problem, completion: str) -> bool:
    """SantaCoder FIM scoring as bigcode-evaluation-harness does it: the whole generated middle equals
    the masked line, surrounding whitespace aside."""
    return completion.strip() == (problem.reference or "").strip()


def judge(problem: Problem, completion: str, limits: Limits | None = None, isolation: str | None = None) -> Verdict:
    if problem.scoring == "exact-match":
        status = "passed" if exact_match(problem, completion) else "failed"
        return Verdict(status, None, 0.0, "", EXACT_MATCH)
    return run_tests(
        get_language(problem.language), program_head(problem, completion), problem.tests, limits, isolation
    )


def verdict_fields(verdict: Verdict | None) -> dict:
    """A record's scoring: passed (None when unscored: not executed, or its toolchain unavailable),
    the status, why, and which sandbox judged it."""
    if verdict is None:
        return {"passed": None, "status": None, "verdict_detail": None, "isolation": None}
    passed = None if verdict.status == "unavailable" else verdict.status == "passed"
    return {
        "passed": passed,
        "status": verdict.status,
        "verdict_detail": verdict.detail,
        "isolation": verdict.isolation,
    }


def check_execution(cfg) -> str | None:
    """Before anything is generated: the sandbox level that will judge a run's programs (None when
    nothing is executed), and every toolchain its tasks need, unless ``skip_unavailable``."""
    executed = [get_task(t) for t in cfg.tasks if get_task(t).scoring == "tests"]
    if not cfg.allow_code_execution or not executed:
        return None
    level = isolation_level(cfg.isolation)
    for task in executed:
        language = get_language(task.language)
        missing = language.missing()
        if missing and not cfg.skip_unavailable:
            raise HarnessError(
                f"task {task.name} needs {missing}, which is not installed ({language.install_hint}); "
                "pass --skip-unavailable to run it unscored"
            )
    return level


def judge_many(
    items: Sequence[tuple[Problem, str]],
    workers: int = 2,
    limits: Limits | None = None,
    progress: Callable[[int], None] | None = None,
    isolation: str | None = None,
) -> list[Verdict]:
    """Judge (problem, completion) pairs in parallel worker threads (each runs its own sandbox)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(judge, p, c, limits, isolation) for p, c in items]
        out = []
        for f in futures:
            out.append(f.result())
            if progress:
                progress(1)
        return out


def validation_items(problems: Sequence[Problem]) -> tuple[list, list]:
    """(problem, reference) pairs that must pass; (problem, completion) pairs that must fail."""
    must_pass = [(p, p.reference) for p in problems if p.reference is not None]
    if problems and problems[0].scoring == "exact-match":
        return must_pass, [(p, "") for p in problems]
    must_fail = [(p, get_language(p.language).wrong_completion) for p in problems]
    must_fail += [(p, cheat) for p in problems if p.suffix is None for cheat in get_language(p.language).cheats]
    return must_pass, must_fail


def validate(
    problems: Sequence[Problem],
    workers: int = 2,
    limits: Limits | None = None,
    progress=None,
    isolation: str | None = None,
) -> dict:
    """References must pass; the deliberately wrong completion and every early-exit cheat must fail."""
    must_pass, must_fail = validation_items(problems)
    ref_verdicts = judge_many(must_pass, workers, limits, progress, isolation)
    bad_verdicts = judge_many(must_fail, workers, limits, progress, isolation)
    failed_refs = [
        (p.problem_id, v.status, v.detail, v.stderr[-300:])
        for (p, _), v in zip(must_pass, ref_verdicts, strict=True)
        if v.status != "passed"
    ]
    passed_bad = [(p.problem_id, c) for (p, c), v in zip(must_fail, bad_verdicts, strict=True) if v.status == "passed"]
    return {
        "problems": len(problems),
        "references": len(must_pass),
        "references_passed": len(must_pass) - len(failed_refs),
        "reference_failures": failed_refs,
        "must_fail": len(must_fail),
        "wrong_passed": passed_bad,
        "wrong_statuses": dict(Counter(v.status for v in bad_verdicts)),
        "unavailable": sum(v.status == "unavailable" for v in ref_verdicts + bad_verdicts),
        "isolation": sorted({v.isolation for v in ref_verdicts + bad_verdicts}),
        "ok": bool(problems) and not failed_refs and not passed_bad,
    }
