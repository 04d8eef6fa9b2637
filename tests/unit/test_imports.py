"""The import graph of producer/, worker/ and storage/, read from the source with ``ast``.

Module-level and function-level imports both count (a deferred import hides a cycle, it does
not remove it). The rules: no cycle among the project's modules; layers point down at package
level (storage imports neither worker nor producer, worker never imports producer); a producer
module outside ``producer/tools/`` imports from ``worker`` at module level only the light
modules in ``PRODUCER_MAY_IMPORT`` and never onnxruntime itself (the producer never pulls in
onnxruntime, Celery's task code or the model).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producer", "worker", "storage")
PRODUCER_MAY_IMPORT = {"worker.contract", "worker.settings", "worker.staging",
                       "worker.model.policy", "worker.fairshare"}
"""What the producer imports from ``worker`` at module level (a package: its modules too):
the message types, settings, the staging core both processes run, the runtime policy
the dry run asks (it reads stored figures; no onnxruntime), and the job queues' names and
registry (fair share; standard library only)."""
LAYERS = {"storage": 0, "worker": 1, "producer": 2}
"""Package layers: an import points to the same layer or below (a deferred one too)."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    module_level: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, source: str, known: set[str]) -> list[Edge]:
    """Edges from module ``name`` to the project modules its source imports."""
    is_pkg = name in {k.rsplit(".", 1)[0] for k in known if "." in k}
    edges: list[Edge] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = module_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for target in _targets(child, name, is_pkg, known):
                edges.append(Edge(name, target, child.lineno, inner))  # type: ignore[attr-defined]
            visit(child, inner)

    visit(ast.parse(source), True)
    return edges


def _targets(node: ast.AST, name: str, is_pkg: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for t in (_longest_known(a.name, known) for a in node.names) if t]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = name.split(".") if is_pkg else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in known else _longest_known(base, known)
        if target and target != name:
            out.append(target)
    return out


def _longest_known(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def project_edges(root: Path = ROOT) -> list[Edge]:
    mods = project_modules(root)
    known = set(mods)
    return [e for name, path in mods.items()
            for e in imports_of(name, path.read_text(encoding="utf-8"), known)]


# -- the rules on this repository --------------------------------------------------------------
def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for e in project_edges():
        graph.setdefault(e.source, set()).add(e.target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_producer_imports_only_contract_and_settings_from_worker_at_module_level():
    bad = [f"{e.source}:{e.line} imports {e.target}" for e in project_edges()
           if e.module_level and e.source.startswith("producer")
           and not e.source.startswith("producer.tools")
           and (e.target == "worker" or e.target.startswith("worker."))
           and not any(e.target == m or e.target.startswith(m + ".")
                       for m in PRODUCER_MAY_IMPORT)]
    assert not bad, "producer imports worker internals at module level:\n" + "\n".join(bad)


def upward_edges(edges: list[Edge]) -> list[str]:
    """Imports that point up a layer (storage -> worker/producer, worker -> producer)."""
    def layer(mod: str) -> int:
        return LAYERS[mod.split(".")[0]]

    return [f"{e.source}:{e.line} imports {e.target}"
            + ("" if e.module_level else " (deferred)")
            for e in edges if layer(e.target) > layer(e.source)]


def test_layers_point_down_at_package_level():
    bad = upward_edges(project_edges())
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def onnxruntime_imports(source: str) -> list[int]:
    """Lines that import onnxruntime (at any depth)."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "onnxruntime"
                                                  for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0]
                == "onnxruntime")]


def test_producer_outside_its_tools_never_imports_onnxruntime():
    mods = project_modules()
    bad = [f"{name}:{line}" for name, path in mods.items()
           if name.startswith("producer") and not name.startswith("producer.tools")
           for line in onnxruntime_imports(path.read_text(encoding="utf-8"))]
    assert not bad, "producer modules import onnxruntime: " + ", ".join(bad)
    # ... nor through what they import at module level: load them all in a fresh interpreter
    import subprocess
    import sys

    names = sorted(n for n in mods if n.startswith("producer")
                   and not n.startswith("producer.tools") and n != "producer.__main__")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n"
                                                 for n in names)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onnxruntime'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]", out


def test_the_walk_sees_every_package():
    mods = project_modules()
    wanted = {"producer.job", "worker.settings", "storage.bundle", "worker.model.session"}
    assert wanted <= set(mods)
    assert any(e.source == "producer.job" and e.target == "producer.broker"
               for e in project_edges())


# -- the checker itself can fail ----------------------------------------------------------------
SRC = '''
import storage.atomic
from . import sibling
from .sibling import thing
from worker.model import session

def later():
    from worker import tasks
    import storage.hashing as h
'''


def test_imports_of_sees_module_and_function_level_and_relative():
    known = {"worker", "worker.model", "worker.model.session", "worker.tasks", "worker.sibling",
             "worker.me", "storage", "storage.atomic", "storage.hashing"}
    got = {(e.target, e.module_level) for e in imports_of("worker.me", SRC, known)}
    assert got == {("storage.atomic", True), ("worker.sibling", True),
                   ("worker.model.session", True), ("worker.tasks", False),
                   ("storage.hashing", False)}


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_an_upward_import_is_reported_even_deferred(tmp_path):
    for pkg in ("producer", "worker", "storage"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "worker" / "task.py").write_text("def run():\n    from producer import job\n")
    (tmp_path / "producer" / "job.py").write_text("import worker.task\nimport storage.x\n")
    (tmp_path / "storage" / "x.py").write_text("from worker.task import run\n")
    assert sorted(upward_edges(project_edges(tmp_path))) == [
        "storage.x:1 imports worker.task", "worker.task:2 imports producer.job (deferred)"]
    assert onnxruntime_imports("def f():\n    import onnxruntime as ort\n") == [2]
    assert onnxruntime_imports("from onnxruntime.quantization import x\nimport os\n") == [1]


def test_a_cycle_in_a_real_tree_is_reported(tmp_path):
    for pkg, body in {"producer": "", "worker": "", "storage": ""}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    (tmp_path / "worker" / "a.py").write_text("def f():\n    from worker import b\n")
    (tmp_path / "worker" / "b.py").write_text("import worker.a\n")
    graph: dict[str, set[str]] = {}
    for e in project_edges(tmp_path):
        graph.setdefault(e.source, set()).add(e.target)
    assert find_cycle(graph) == ["worker.a", "worker.b", "worker.a"]


# -- every imported project name exists (benchmarks and tests included) -------------------------
SCANNED = (*PACKAGES, "benchmarks", "tests")


def from_imports(source: str, known: set[str]) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of each absolute ``from <project module> import name``, at any
    depth (a function-level import fails only when that function runs: a benchmark did)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module in known:
            out += [(node.lineno, node.module, a.name) for a in node.names if a.name != "*"]
    return out


def missing_names(paths: list[Path], known: set[str], root: Path = ROOT) -> list[str]:
    import importlib

    bad = []
    for path in paths:
        for line, module, name in from_imports(path.read_text(encoding="utf-8"), known):
            if f"{module}.{name}" in known:
                continue
            if not hasattr(importlib.import_module(module), name):
                bad.append(f"{path.relative_to(root)}:{line}: {module} has no {name!r}")
    return bad


def test_every_name_imported_from_the_project_exists():
    known = set(project_modules())
    paths = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(paths) > 100
    bad = missing_names(paths, known)
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


def test_a_missing_imported_name_is_reported(tmp_path):
    src = tmp_path / "bench.py"
    src.write_text("from storage.atomic import write_bytes_atomic\n\ndef run():\n"
                   "    from storage.atomic import no_such_function\n")
    assert missing_names([src], set(project_modules()), tmp_path) == [
        "bench.py:4: storage.atomic has no 'no_such_function'"]
