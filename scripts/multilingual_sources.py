"""Collect real non-Python sources reachable from the CPU machine into one compressed archive that is
carried to the GPU for the default model's corpus (the GPU image holds Python, C and C++ only).

Sources: the JDK's src.zip (Java), Go's standard library, npm packages (JavaScript, TypeScript),
PyPI source distributions of Rust-backed packages (Rust), and the PHP and shell files installed here.
The recipe's corpus stage then filters, deduplicates and decontaminates them like every other file.

    python scripts/multilingual_sources.py --out .carry/mlsrc.tar.xz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

NPM_PACKAGES = [
    "rxjs",
    "zod",
    "typeorm",
    "@nestjs/core",
    "@nestjs/common",
    "@angular/core",
    "vue",
    "lodash",
    "express",
    "axios",
    "three",
    "mocha",
    "eslint",
    "webpack",
    "prettier",
]
RUST_SDISTS = [
    "ruff",
    "tokenizers",
    "pydantic-core",
    "orjson",
    "cryptography",
    "rpds-py",
    "jiter",
    "safetensors",
    "polars",
    "tiktoken",
]
BUDGET_MB = {"java": 14, "go": 14, "js": 12, "ts": 8, "rs": 14, "php": 4, "sh": 2}
# Installed trees searched for JS, PHP and shell (scripts in bin directories are found by their #! line).
LOCAL_ROOTS = (
    "/usr/lib/node_modules",
    "/usr/share/php",
    "/usr/lib/google-cloud-sdk",
    "/usr/bin",
    "/usr/sbin",
    "/etc/init.d",
)
EXT = {".java": "java", ".go": "go", ".js": "js", ".mjs": "js", ".ts": "ts", ".rs": "rs", ".php": "php", ".sh": "sh"}


def fetch_rust_sdists(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUST_SDISTS:
        index = f"https://pypi.org/pypi/{name}/json"
        try:
            with urllib.request.urlopen(index, timeout=30) as r:
                urls = [u["url"] for u in json.load(r)["urls"] if u["packagetype"] == "sdist"]
            archive = dest / f"{name}.tar.gz"
            urllib.request.urlretrieve(urllib.parse.urljoin(index, urls[0]), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(dest / name, filter="data")
        except (OSError, IndexError, KeyError, tarfile.TarError) as exc:
            print(f"skip {name}: {exc}")


def collect(root: Path, jdk_src: str, go_src: str) -> None:
    if Path(jdk_src).exists():
        with zipfile.ZipFile(jdk_src) as z:
            z.extractall(root / "java", [n for n in z.namelist() if n.endswith(".java")])
    if Path(go_src).exists():
        subprocess.run(["cp", "-r", go_src, str(root / "go")], check=False)
    npm = root / "npm"
    npm.mkdir()
    subprocess.run(["npm", "pack", "--silent", *NPM_PACKAGES], cwd=npm, check=False, capture_output=True)
    for tgz in npm.glob("*.tgz"):
        with tarfile.open(tgz) as tar:
            tar.extractall(npm / tgz.stem, filter="data")
    fetch_rust_sdists(root / "rs")
    for base in LOCAL_ROOTS:
        if Path(base).exists():
            os.symlink(base, root / ("local" + base.replace("/", "_")))


def is_shell_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(64)
        return first.startswith(b"#!") and b"sh" in first
    except OSError:
        return False


def pack(root: Path, out: Path) -> dict:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "testdata"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            lang = EXT.get(os.path.splitext(name)[1])
            if lang is None and any(d in path for d in ("/local_usr_bin/", "/local_usr_sbin/", "/local_etc_init.d/")):
                lang = "sh" if is_shell_script(path) else None
            if lang is None or os.path.islink(path):
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if 200 <= size <= 200_000:
                files.append((hashlib.sha1(path.encode()).hexdigest(), path, lang, size))
    used = dict.fromkeys(BUDGET_MB, 0)
    with tarfile.open(out, "w:xz", preset=6) as tar:
        for _, path, lang, size in sorted(files):
            if used[lang] + size > BUDGET_MB[lang] * 1e6:
                continue
            used[lang] += size
            arcname = "mlsrc/" + os.path.relpath(path, root)
            tar.add(path, arcname=arcname if arcname.endswith(tuple(EXT)) else arcname + ".sh")
    return {lang: round(n / 1e6, 1) for lang, n in used.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".carry/mlsrc.tar.xz")
    ap.add_argument("--jdk-src", default="/usr/lib/jvm/temurin-25-jdk-amd64/lib/src.zip")
    ap.add_argument("--go-src", default="/usr/share/go-1.19/src")
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        collect(Path(tmp), args.jdk_src, args.go_src)
        print(pack(Path(tmp), Path(args.out)))


if __name__ == "__main__":
    main()
