"""The package's shape, held to the redesign's bar: short, simple functions, no import cycles, and
no code the formatter may not touch."""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 60
MAX_COMPLEXITY = 15


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_no_function_is_long_or_complex():
    long, complex_ = [], []
    for path in SOURCES:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{_module(path)}.{node.name}: {lines} lines")
        complex_ += [
            f"{_module(path)}.{block.fullname}: {block.complexity}"
            for block in cc_visit(text)
            if block.complexity > MAX_COMPLEXITY
        ]
    assert not long, long
    assert not complex_, complex_


def _imports() -> dict[str, set[str]]:
    """Every module's imports of other harness modules, at any depth (lazy ones included)."""
    modules = {_module(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_inside_the_package():
    graph = _imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a))
    assert not cycles, cycles


def test_the_formatter_may_touch_everything():
    repo = PACKAGE.parent
    skipped = [
        str(p.relative_to(repo))
        for top in ("harness", "tests", "scripts")
        for p in (repo / top).rglob("*.py")
        if "fmt: " + "skip" in p.read_text()
    ]
    assert not skipped, skipped
