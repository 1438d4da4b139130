"""The source keeps its shape: small modules, short functions, and no import cycle among thinktune's modules (at
module level; an import inside a function is deferred on purpose)."""

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((SRC / "thinktune").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text()))
    return found


def imports(name: str, tree: ast.Module, known) -> set[str]:
    """The thinktune modules ``tree`` imports at module level (``from pkg import module`` counts the module)."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in known and m != name}


def cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_a_cycle_is_found_where_there_is_one():
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": set()}) is None


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = []
    for name, (path, tree) in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long


def test_no_import_cycle_among_thinktunes_modules():
    found = modules()
    graph = {name: imports(name, tree, found) for name, (_, tree) in found.items()}
    cycles = [cycle for name in graph if (cycle := cycle_from(name, graph))]
    assert not cycles, " -> ".join(cycles[0])
