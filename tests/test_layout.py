"""The layout of DESIGN §7: no import circle among jgd's modules, imports inside functions
included (a lazy import is still a dependency), and the checkpoint service imports no driver."""

import ast
import pathlib

JGD = pathlib.Path(__file__).resolve().parents[1] / "jgd"


def _module_name(path):
    parts = path.relative_to(JGD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """module → the jgd modules it imports (anywhere in it)."""
    modules = {_module_name(p): p for p in JGD.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from jgd import _sampling` imports the module; `from jgd import sgd`, the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        # the package's __init__ re-exports everything: an edge into it is an upward import
        if start not in state and start != "jgd":
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_two_jgd_modules_import_each_other_even_lazily():
    graph = _imports()
    assert {"jgd.minimize", "jgd.sweep", "jgd.checkpoint", "jgd._drivers"} <= set(graph)
    graph = {name: targets - {"jgd"} for name, targets in graph.items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_the_checkpoint_service_and_the_engine_import_no_driver_or_front():
    graph = _imports()
    fronts = {"jgd.minimize", "jgd.sweep", "jgd.halving", "jgd._drivers"}
    for service in ("jgd.checkpoint", "jgd._engine", "jgd._step"):
        assert not graph[service] & fronts, (service, graph[service] & fronts)


def test_nothing_but_the_package_and_the_benchmark_tool_imports_the_package():
    # the benchmark tool is the top floor: it looks rules up by name in the package
    graph = _imports()
    assert [name for name, targets in graph.items()
            if "jgd" in targets and name != "jgd" and not name.startswith("jgd.benchmark")] == []
