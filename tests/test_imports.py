"""The package's import graph, read from the source: one name (``vizoo``), layers that only point down, no
cycles, and no import deferred into a function to dodge one.

The graph is static (every ``import`` statement in every module, at any depth), so an import hidden in a
function body counts as an edge just as a top-level one does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import vizoo

ROOT = Path(vizoo.__file__).parent
PACKAGES = ("models", "guides", "experiments")
# Third-party imports that may stay inside functions: each is heavy and needed by one path only
# (plotting, the ArviZ export, scikit-learn's loaders and k-means++, music21's parser), so the CLI and
# `import vizoo` start without them.
DEFERRABLE = {"matplotlib", "arviz", "sklearn", "music21"}


def modules() -> dict[str, Path]:
    out = {"vizoo": ROOT / "__init__.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("vizoo", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("vizoo", *parts))
            out[name] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, deferred) for every import of a vizoo module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` and try/except blocks at module level are still top level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    known = modules()
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            if target == "vizoo" or target.startswith("vizoo."):
                found.append((target, node, id(node) not in top))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {t for t, _, _ in imports(name, path) if t != name} for name, path in modules().items()}


def test_no_import_cycles():
    g = graph()
    # the root package's __init__ gathers the API; a submodule importing its parent package is not a cycle
    # of modules (Python runs the parent first), so edges to "vizoo" itself are not allowed at all
    assert not [n for n, ts in g.items() if "vizoo" in ts], "no module imports the top-level vizoo package"
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


def test_no_deferred_package_imports():
    deferred = [f"{path.relative_to(ROOT)}:{node.lineno} imports {t}"
                for name, path in modules().items() for t, node, late in imports(name, path) if late]
    assert not deferred, "\n".join(deferred)


def test_deferred_third_party_imports_are_the_heavy_ones():
    """Inside functions only heavy, single-use third-party modules (see DEFERRABLE)."""
    bad = []
    for path in modules().values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):
                top |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and not getattr(node, "level", 0):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] not in DEFERRABLE]
    assert not bad, "\n".join(bad)


def test_layers_point_down():
    """exact references know no Pyro model code and no guide; models know no guide; nothing below the
    registry imports it."""
    g = graph()
    for name, targets in g.items():
        if name.startswith("vizoo.models.exact"):
            assert all(t.startswith(("vizoo.models.exact", "vizoo.models.errors", "vizoo.models.declaration"))
                       for t in targets), (name, targets)
        if name.startswith("vizoo.models"):
            assert not [t for t in targets if t.startswith(("vizoo.guides", "vizoo.experiments"))], (name, targets)
        if name.startswith("vizoo.guides"):
            assert not [t for t in targets if t.startswith("vizoo.experiments")], (name, targets)


def test_no_sys_path_edits():
    here = Path(__file__).resolve().parents[1]
    hits = [str(p.relative_to(here)) for d in ("tests", "benchmarks", *PACKAGES) for p in (here / d).rglob("*.py")
            if "sys.path" in p.read_text(encoding="utf-8") and p.name != Path(__file__).name]
    assert not hits, hits
