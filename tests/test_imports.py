"""The package's shape: no import cycle (every import counts: module level, inside functions, under
TYPE_CHECKING), no helper defined twice, no function nobody calls, the API key read in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "niah"



def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the niah modules it imports anywhere in its source."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}".rstrip(".")
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_niah_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


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
    assert readers == [], f"read $NIAH_API_KEY through niah.api_key.api_key, not in {readers}"
