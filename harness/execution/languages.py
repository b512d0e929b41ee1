"""How each language's program is built and run -- the way MultiPL-E's own evaluators run them.
Commands run inside the sandbox with the program's directory as the working directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

JAVATUPLES = "/usr/share/java/javatuples.jar"
# Programs run as an unprivileged user: toolchains under a private home (e.g. ~/.cargo) are not usable
# there, so the sandbox and the availability check both use the system PATH only.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Language:
    name: str
    file_name: str
    build: tuple[str, ...] | None  # None: interpreted
    run: tuple[str, ...]
    tools: tuple[str, ...]  # executables that must exist
    install_hint: str
    files: tuple[str, ...] = ()  # other files that must exist (e.g. a jar on the class path)
    env: tuple[tuple[str, str], ...] = ()

    def missing(self) -> str | None:
        """What is missing to run this language here, or None."""
        for tool in self.tools:
            if shutil.which(tool, path=SANDBOX_PATH) is None:
                return tool
        return next((path for path in self.files if not os.path.exists(path)), None)


LANGUAGES: dict[str, Language] = {
    lang.name: lang
    for lang in (
        Language("python", "prog.py", None, ("python3", "prog.py"), ("python3",), "install python3"),
        Language("cpp", "prog.cpp", ("g++", "-std=c++17", "-O0", "-o", "prog", "prog.cpp"), ("./prog",), ("g++",),
                 "apt-get install g++"),
        Language("java", "Problem.java", ("javac", "-cp", JAVATUPLES, "Problem.java"),
                 ("java", "-ea", "-Xmx1g", "-cp", f".:{JAVATUPLES}", "Problem"), ("javac", "java"),
                 "apt-get install openjdk-17-jdk-headless libjavatuples-java", files=(JAVATUPLES,)),
        Language("js", "prog.js", None, ("node", "prog.js"), ("node",), "apt-get install nodejs"),
        # MultiPL-E passes --types node; its TS tests declare `require` themselves, so @types/node is not needed.
        Language("ts", "prog.ts", ("tsc", "--target", "esnext", "--lib", "esnext", "prog.ts"), ("node", "prog.js"),
                 ("tsc", "node"), "npm install -g typescript"),
        Language("php", "prog.php", None, ("php", "prog.php"), ("php",), "apt-get install php-cli"),
        Language("sh", "prog.sh", None, ("bash", "prog.sh"), ("bash",), "apt-get install bash"),
        Language("rs", "prog.rs", ("rustc", "-O", "-o", "prog", "prog.rs"), ("./prog",), ("rustc",),
                 "install rustc (rustup or apt-get install rustc)"),
        Language("go", "prog_test.go", None, ("go", "test", "prog_test.go"), ("go",), "apt-get install golang-go",
                 env=(("GOCACHE", "/tmp/gocache"), ("GOPATH", "/tmp/gopath"), ("GO111MODULE", "off"),
                      ("GOFLAGS", "-count=1"))),
    )
}  # fmt: skip
ALIASES = {"py": "python", "javascript": "js", "typescript": "ts", "bash": "sh", "rust": "rs", "c++": "cpp"}


def get_language(name: str) -> Language:
    key = ALIASES.get(name, name)
    if key not in LANGUAGES:
        raise KeyError(name)
    return LANGUAGES[key]
