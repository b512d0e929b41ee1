"""One table of per-language rules: how a judged program is assembled, built and run.

Assembly follows the reference evaluators (human-eval, bigcode-evaluation-harness, MultiPL-E):
``prompt + completion [+ suffix] + "\\n" + tests``. On top of that, and beyond every reference, a pass
needs **proof that the tests ran to their end**: each language appends, after the (trusted) test code,
a statement that prints a fresh per-program token, and restores first what a completion can switch off
in that language (C++ ``assert`` under ``NDEBUG``, shell functions shadowing ``set`` or ``echo``, traps).
Exit status 0 without the token is a failure: ``exit(0)`` in a body, a static initialiser that exits,
an exit trap, ``atexit`` handlers rewriting the status all end the program before the token is printed.
Limits of the idea: code running in the tests' own process could read its program text and print the
token itself; no in-process evaluator can exclude that, and the proof does not try.

Timeouts are the references' own: human-eval's 3 s for Python, MultiPL-E's per-language values
(``safe_subprocess``: 15 s per build and per run; 5 s for JavaScript; 30 s for Go's ``go test``).
Commands run inside the sandbox with the program's directory as the working directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace

JAVATUPLES = "/usr/share/java/javatuples.jar"
# Programs run as an unprivileged user: toolchains under a private home (e.g. ~/.cargo) are not usable
# there, so the sandbox and the availability check both use the system PATH only.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROOF_PREFIX = "sdsat-proof-"


def _replace_once(text: str, old: str, new: str) -> str:
    if old not in text:
        raise ValueError(f"test code has no {old!r} to wrap")
    return text.replace(old, new, 1)


def _python(tests: str, token: str) -> str:
    return f"{tests}\nimport os as _sdsat_os\n_sdsat_os.write(1, b'\\n{token}\\n')\n"


def _cpp(tests: str, token: str) -> str:
    # The tests' main becomes a function called by ours; assert is re-armed whatever the completion did
    # (<assert.h> redefines the macro on every inclusion, by NDEBUG's value at that point).
    restore = "\n#undef NDEBUG\n#undef assert\n#include <assert.h>\n#include <cstdio>\n"
    body = _replace_once(tests, "int main(", restore + "void sdsat_tests_main(")
    return (
        f'{body}\nint main() {{\n    sdsat_tests_main();\n    std::printf("\\n%s\\n", "{token}");\n'
        "    std::fflush(stdout);\n    return 0;\n}\n"
    )


def _java(tests: str, token: str) -> str:
    return (
        f"{tests}\nclass SdsatProof {{\n    public static void main(String[] args) throws Exception {{\n"
        f'        Problem.main(args);\n        System.out.println("\\n{token}");\n        System.out.flush();\n'
        "    }\n}\n"
    )


def _java_standalone(language: Language, source: str) -> Language:
    """A whole Java program as ``exec`` gets it: javac wants a public class in a file of its name, and
    the class to run is the one with ``main`` (in judged programs, SdsatProof calls Problem's)."""
    public = re.search(r"\bpublic\s+(?:final\s+|abstract\s+)*class\s+(\w+)", source)
    main = re.search(r"\bclass\s+(\w+)[^{]*\{(?:(?!\bclass\b).)*?\bstatic\s+void\s+main\s*\(", source, re.S)
    file_name = f"{public.group(1) if public else 'Program'}.java"
    entry = main.group(1) if main else (public.group(1) if public else "Program")
    return replace(
        language,
        file_name=file_name,
        build=(*language.build[:-1], file_name),
        run=(*language.run[:-1], entry),
    )


def _js(tests: str, token: str) -> str:
    return f'{tests}\nprocess.stdout.write("\\n{token}\\n");\n'


def _ts(tests: str, token: str) -> str:
    return f'{tests}\n(globalThis as any).process.stdout.write("\\n{token}\\n");\n'


def _php(tests: str, token: str) -> str:
    return f'{tests}\necho "\\n{token}\\n";\n'


# POSIX mode makes bash find special builtins (set, unset, trap...) before any function of the same
# name, so the completion's shadowing functions, aliases and traps can be removed for certain.
SH_RESTORE = (
    "POSIXLY_CORRECT=1\nunset -f set unset trap exit return shift eval exec export readonly source . "
    "echo printf test [ command builtin enable shopt unalias 2>/dev/null\n"
    "unalias -a 2>/dev/null\nshopt -u expand_aliases\ntrap - EXIT ERR DEBUG RETURN\nunset POSIXLY_CORRECT\n"
)


def _sh(tests: str, token: str) -> str:
    # The tests open by closing the function the completion was writing; restore right after it.
    first, rest = tests.split("\n", 1) if "\n" in tests else (tests, "")
    return f"{first}\n{SH_RESTORE}{rest}\necho '{token}'\n"


def _rs(tests: str, token: str) -> str:
    body = _replace_once(tests, "fn main()", "fn sdsat_tests_main()")
    return f'{body}\nfn main() {{\n    sdsat_tests_main();\n    println!("\\n{token}");\n}}\n'


def _go(tests: str, token: str) -> str:
    # Go's tests report failures without stopping, so the proof comes with exit status 0 (every test
    # passed) and from a test placed last (tests run in source order). Every prompt imports fmt.
    return f'{tests}\nfunc TestZzzSdsatProof(t *testing.T) {{\n\tfmt.Println("\\n{token}")\n}}\n'


@dataclass(frozen=True)
class Language:
    name: str
    file_name: str
    build: tuple[str, ...] | None  # None: interpreted
    run: tuple[str, ...]
    tools: tuple[str, ...]  # executables that must exist
    install_hint: str
    run_timeout_s: float = 15.0
    build_timeout_s: float = 15.0
    prove: Callable[[str, str], str] = field(default=_python, compare=False)
    files: tuple[str, ...] = ()  # other files that must exist (e.g. a jar on the class path)
    env: tuple[tuple[str, str], ...] = ()
    # How a whole program (``exec``), not one assembled around tests, is built and run.
    standalone: Callable[[Language, str], Language] = field(default=lambda language, source: language, compare=False)
    # What `validate` shows the tests fail: a completion that is deliberately wrong, and completions that
    # end the program with exit status 0 before the tests finish or switch them off (each passed every
    # problem when exit status 0 counted as a pass).
    wrong_completion: str = ""
    cheats: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """What is missing to run this language here, or None."""
        for tool in self.tools:
            if shutil.which(tool, path=SANDBOX_PATH) is None:
                return tool
        return next((path for path in self.files if not os.path.exists(path)), None)

    def assemble(self, head: str, tests: str, token: str) -> str:
        """The judged program: ``head`` (prompt + completion [+ suffix]), a newline, then the trusted
        ``tests`` wrapped so that they print ``token`` only once they have all run."""
        return head + "\n" + self.prove(tests, token)


LANGUAGES: dict[str, Language] = {
    lang.name: lang
    for lang in (
        Language(
            "python",
            "prog.py",
            None,
            ("python3", "prog.py"),
            ("python3",),
            "install python3",
            run_timeout_s=3.0,
            prove=_python,
            wrong_completion="    raise NotImplementedError('deliberately wrong')\n",
            cheats=(
                "    exit(0)\n",
                "    import sys\n    sys.exit(0)\n",
                "    import os\n    os._exit(0)\n",
                "    quit()\n",
                "    raise SystemExit\n",
                "    import atexit, os\n    atexit.register(os._exit, 0)\n    return None\n",
            ),
        ),
        Language(
            "cpp",
            "prog.cpp",
            ("g++", "-std=c++17", "-O0", "-o", "prog", "prog.cpp"),
            ("./prog",),
            ("g++",),
            "apt-get install g++",
            prove=_cpp,
            wrong_completion="    abort();\n",
            cheats=(
                "    exit(0);\n",
                "    return {};\n}\nstatic int sdsat_cheat = (std::exit(0), 0);\nvoid sdsat_cheat_f() {\n",
                "    return {};\n#undef assert\n#define assert(x) ((void)0)\n",
            ),
        ),
        Language(
            "java",
            "Problem.java",
            ("javac", "-encoding", "UTF8", "-cp", JAVATUPLES, "Problem.java"),
            ("java", "-ea", "-Xmx1g", "-cp", f".:{JAVATUPLES}", "SdsatProof"),
            ("javac", "java"),
            "apt-get install openjdk-17-jdk-headless libjavatuples-java",
            prove=_java,
            files=(JAVATUPLES,),
            standalone=_java_standalone,
            wrong_completion='    throw new RuntimeException("deliberately wrong");\n',
            cheats=("        if (true) System.exit(0);\n        throw new RuntimeException();\n",),
        ),
        Language(
            "js",
            "prog.js",
            None,
            ("node", "prog.js"),
            ("node",),
            "apt-get install nodejs",
            run_timeout_s=5.0,
            prove=_js,
            wrong_completion="    throw new Error('deliberately wrong');\n}\n",
            cheats=("    process.exit(0);\n}\n",),
        ),
        # MultiPL-E passes --types node; its TS tests declare `require` themselves, so @types/node is not needed.
        Language(
            "ts",
            "prog.ts",
            ("tsc", "--target", "esnext", "--lib", "esnext", "prog.ts"),
            ("node", "prog.js"),
            ("tsc", "node"),
            "npm install -g typescript",
            prove=_ts,
            wrong_completion="    throw new Error('deliberately wrong');\n}\n",
            cheats=("    (globalThis as any).process.exit(0);\n    return undefined as any;\n}\n",),
        ),
        Language(
            "php",
            "prog.php",
            None,
            ("php", "prog.php"),
            ("php",),
            "apt-get install php-cli",
            prove=_php,
            wrong_completion="    throw new Exception('deliberately wrong');\n}\n",
            cheats=("    exit(0);\n}\n",),
        ),
        Language(
            "sh",
            "prog.sh",
            None,
            ("bash", "prog.sh"),
            ("bash",),
            "apt-get install bash",
            prove=_sh,
            wrong_completion="    exit 1\n",
            cheats=(
                "    echo\n}\ntrap 'exit 0' EXIT\nsdsat_cheat() {\n    :\n",
                "    :\n}\nexit 0\nsdsat_cheat() {\n    :\n",
                "    :\n}\nset() { :; }\nsdsat_cheat() {\n    :\n",
            ),
        ),
        Language(
            "rs",
            "prog.rs",
            ("rustc", "-O", "-o", "prog", "prog.rs"),
            ("./prog",),
            ("rustc",),
            "install rustc (rustup or apt-get install rustc)",
            prove=_rs,
            wrong_completion='    panic!("deliberately wrong");\n',
            cheats=("    std::process::exit(0);\n",),
        ),
        # Built into a test binary and run directly (go test's 30 s cover both): the binary prints every
        # test's output, where `go test` hides a passing test's.
        Language(
            "go",
            "prog_test.go",
            ("go", "test", "-c", "-o", "prog.test", "prog_test.go"),
            ("./prog.test",),
            ("go",),
            "apt-get install golang-go",
            run_timeout_s=15.0,
            build_timeout_s=30.0,
            prove=_go,
            env=(("GOCACHE", "/tmp/gocache"), ("GOPATH", "/tmp/gopath"), ("GO111MODULE", "off")),
            wrong_completion='    panic("deliberately wrong")\n}\n',
            cheats=(),  # a Go completion cannot import os: its exits are compile errors
        ),
    )
}
ALIASES = {"py": "python", "javascript": "js", "typescript": "ts", "bash": "sh", "rust": "rs", "c++": "cpp"}


def get_language(name: str) -> Language:
    key = ALIASES.get(name, name)
    if key not in LANGUAGES:
        raise KeyError(name)
    return LANGUAGES[key]
