"""The package's shape: import-linter's contracts (layers by stage, no cycle), no helper defined
twice, no function nobody calls, the API key read in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "niah"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's import-linter contracts: the stages import only downward, no package holds
    an import cycle, publish never reaches a server. A broken one is named with its import chain."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode:
        pytest.fail(done.stdout[done.stdout.find("Contracts"):] + done.stderr, pytrace=False)


def top_level_functions() -> list[tuple[str, ast.FunctionDef]]:
    """(module, def) for every module-level function of niah/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [(module_name(path), node) for node in tree.body if isinstance(node, ast.FunctionDef)]
    return found


def test_no_helper_is_defined_twice() -> None:
    seen: dict[str, str] = {}
    twice = []
    for module, node in top_level_functions():
        body = node.body[1:] if ast.get_docstring(node) else node.body
        shape = ast.dump(node.args) + ast.dump(ast.Module(body=body, type_ignores=[]))
        where = f"{module}.{node.name}"
        if shape in seen:
            twice.append((seen[shape], where))
        seen.setdefault(shape, where)
    assert not twice, f"the same function defined twice: {twice}"


def test_every_function_is_used_somewhere() -> None:
    sources = [p.read_text(encoding="utf-8") for folder in ("niah", "tests", "benchmarks", "scripts")
               for p in (REPO / folder).rglob("*.py")]
    text = "\n".join(sources)
    unused = [f"{module}.{node.name}" for module, node in top_level_functions()
              if not node.decorator_list and len(re.findall(rf"\b{node.name}\b", text)) < 2]
    assert not unused, f"defined but never called: {unused}"


def test_the_api_key_variable_is_read_in_one_place() -> None:
    readers = [module_name(p) for p in PACKAGE.rglob("*.py")
               if re.search(r"environ(\.get\(|\[)\s*[\"']NIAH_API_KEY", p.read_text(encoding="utf-8"))]
    assert readers == [], f"read $NIAH_API_KEY through niah.launch.api_key.api_key, not in {readers}"
