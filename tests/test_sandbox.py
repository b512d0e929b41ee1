"""Hostile programs are contained and judged failed or timeout; the harness and host carry on."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness.execution.languages import LANGUAGES
from harness.execution.sandbox import Limits, isolation_level, run_program

PY = LANGUAGES["python"]
QUICK = Limits(timeout_s=3.0, cpu_s=5)
HARNESS_FILE = os.path.abspath(__file__)


def _nobody_processes() -> int:
    """Live processes of uid nobody (zombies are dead, merely not yet reaped by the machine's init)."""
    out = subprocess.run(["ps", "-u", "65534", "-o", "stat="], capture_output=True, text=True).stdout
    return sum(not state.startswith("Z") for state in out.split())


def run_py(source: str, limits: Limits = QUICK):
    return run_program(PY, source, limits)


def test_isolation_is_reported():
    verdict = run_py("print('ok')\n")
    assert verdict.status == "passed" and verdict.isolation == isolation_level()


@pytest.mark.parametrize(
    "name,source,statuses",
    [
        ("infinite loop", "while True:\n    pass\n", {"timeout"}),
        ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
         {"timeout", "failed"}),
        ("memory bomb", "x = []\nwhile True:\n    x.append(bytearray(1 << 26))\n", {"failed", "timeout"}),
        ("stdout flood", "while True:\n    print('x' * 10000)\n", {"failed", "timeout"}),
        ("sleep after closing output", "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(1000)\n", {"timeout"}),
        ("network", "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n", {"failed"}),
        ("network loopback", "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)\n", {"failed"}),
        ("write outside", f"open({HARNESS_FILE + '.pwned'!r}, 'w').write('x')\n", {"failed"}),
        ("kill parent group", "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
         {"failed", "passed"}),
    ],
)  # fmt: skip
def test_hostile_program_is_contained(name, source, statuses):
    verdict = run_py(source)
    assert verdict.status in statuses, (name, verdict)
    assert not os.path.exists(HARNESS_FILE + ".pwned")
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_background_children_die_with_the_program():
    before = _nobody_processes()
    verdict = run_py("import subprocess\nsubprocess.Popen(['sleep', '1000'])\nprint('left a child')\n")
    assert verdict.status == "passed"
    assert _nobody_processes() <= before


def test_failing_and_passing_verdicts_in_compiled_languages():
    if LANGUAGES["cpp"].missing():
        pytest.skip("g++ not installed")
    ok = run_program(LANGUAGES["cpp"], "#include <cassert>\nint main(){assert(2+2==4);}\n")
    bad = run_program(LANGUAGES["cpp"], "#include <cassert>\nint main(){assert(2+2==5);}\n")
    broken = run_program(LANGUAGES["cpp"], "int main( {\n")
    assert (ok.status, bad.status, broken.status) == ("passed", "failed", "error")


def test_missing_toolchain_is_unavailable_with_hint(monkeypatch):
    from harness.execution import languages

    lang = languages.Language(
        "cobol", "p.cbl", None, ("cobc-not-here",), ("cobc-not-here",), "apt-get install gnucobol"
    )
    verdict = run_program(lang, "x")
    assert verdict.status == "unavailable" and "apt-get install gnucobol" in verdict.detail


@pytest.mark.parametrize("isolation", ["unshare", "rlimits"])
def test_fallback_isolation_levels_still_judge_and_contain(isolation):
    assert run_program(PY, "assert 2 + 2 == 4\n", QUICK, isolation=isolation).status == "passed"
    assert run_program(PY, "assert 2 + 2 == 5\n", QUICK, isolation=isolation).status == "failed"
    verdict = run_program(PY, "import subprocess\nsubprocess.Popen(['sleep', '1000'])\nwhile True:\n    pass\n",
                          QUICK, isolation=isolation)  # fmt: skip
    assert verdict.status == "timeout" and verdict.isolation == isolation
    assert run_program(PY, f"open({HARNESS_FILE + '.pwned'!r}, 'w')\n", QUICK, isolation=isolation).status == "failed"
    assert not os.path.exists(HARNESS_FILE + ".pwned")
