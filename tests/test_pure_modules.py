"""The pure modules (ARCHITECTURE.md rule 4) stay pure: data in, data out, no socket, no database,
no event loop, no thread. The list is `PURE_MODULES` in matrix_core and frontends; this test reads
each module's imports (its source, not running it) and refuses any I/O or store import."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import frontends
import matrix_core

FORBIDDEN = {"asyncio", "socket", "ssl", "select", "selectors", "sqlite3", "aiosqlite", "aiohttp", "aiocoap",
             "subprocess", "threading", "multiprocessing", "urllib", "http", "paho"}
PURE = [f"matrix_core.{name}" for name in matrix_core.PURE_MODULES] + \
       [f"frontends.{name}" for name in frontends.PURE_MODULES]


def imported(module: str) -> set[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.rpartition(".")[0]) \
                if node.level else (node.module or "")
            names.add(base)
    return names


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io(module: str) -> None:
    bad = {name for name in imported(module)
           if name.split(".")[0] in FORBIDDEN or ".store" in f".{name}" or name.endswith(".homeserver")}
    assert not bad, f"{module} imports {sorted(bad)}: keep protocol logic pure, I/O at the edges"
