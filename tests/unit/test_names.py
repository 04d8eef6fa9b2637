"""One concept, one name: a public function name means one thing across producer/, worker/
and storage/ (module-level functions and the Celery task functions a module registers)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_ON_PURPOSE = {
    "register": "each module that defines Celery tasks or click commands registers its own",
    "main": "each command-line entry point (`producer`, `python -m worker.health`) is main",
    "submit": "the `producer submit` command is named as the API function it calls",
}


def public_functions(root: Path = ROOT) -> dict[str, list[str]]:
    """Public function name -> the modules defining it (task functions marked)."""
    found: dict[str, list[str]] = defaultdict(list)
    for pkg in ("producer", "worker", "storage"):
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            rel = str(path.relative_to(root))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                    found[node.name].append(rel)
                    found.update({c.name: [*found.get(c.name, []), f"{rel} (task)"]
                                  for c in node.body if isinstance(c, ast.FunctionDef)
                                  and c.decorator_list and not c.name.startswith("_")})
    return found


def test_public_function_names_are_unique():
    dups = {k: v for k, v in public_functions().items()
            if len(v) > 1 and k not in SHARED_ON_PURPOSE}
    assert not dups, f"one name, several functions: {dups}"


def test_the_walk_finds_task_functions_and_a_duplicate(tmp_path):
    for pkg in ("producer", "worker", "storage"):
        (tmp_path / pkg).mkdir()
    (tmp_path / "worker" / "t.py").write_text(
        "def register(app):\n    @app.task\n    def run(x):\n        return x\n")
    (tmp_path / "storage" / "s.py").write_text("def run():\n    pass\n")
    assert sorted(public_functions(tmp_path)["run"]) == ["storage/s.py", "worker/t.py (task)"]
