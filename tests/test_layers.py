"""The layers point one way (docs/design.md §10), read from the import graph of the source.

base (errors, atomic, registry, fourier, store) → data → physics → models → losses → methods →
evaluation (scoring volumes; the engine validates with it) → engine (config, engine,
shared_phases, distributed) → runner (and evaluation.trained, the evaluation of a trained run)
→ reports / sweep / launcher / demo → cli. An import may
point to its own layer or one below; imports inside functions are for start-up speed only, in
the modules listed in LAZY, and every module-level import graph is acyclic.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mrbench

ROOT = Path(mrbench.__file__).parent

LAYERS = [
    ("base", r"mrbench(\.errors|\.atomic|\.registry|\.fourier|\.store)?$"),
    ("data", r"mrbench\.data(\..*)?$"),
    ("physics", r"mrbench\.physics$"),
    ("models", r"mrbench\.models(\..*)?$"),
    ("losses", r"mrbench\.losses(\..*)?$"),
    ("methods", r"mrbench\.methods(\..*)?$"),
    ("evaluation", r"mrbench\.evaluation\.(metrics|evaluate|adaptation)$|mrbench\.evaluation$"),
    ("engine", r"mrbench\.(config|engine|shared_phases|distributed)$"),
    ("runner", r"mrbench\.(runner|evaluation\.trained)$"),
    ("reports", r"mrbench\.(reports(\..*)?|sweep|launcher|demo)$"),
    ("cli", r"mrbench\.(cli|warm|__main__)$"),
]
#: modules that import inside functions, each for start-up speed (a command that needs no torch)
LAZY = {"mrbench.cli", "mrbench.config", "mrbench.warm", "mrbench.reports.results"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("mrbench", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _edges():
    """(module, imported module, at module level?) for every mrbench import."""
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("mrbench"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    yield name, full if full in modules else target, id(node) in top
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("mrbench"):
                        yield name, alias.name, id(node) in top


def _layer(module: str) -> int:
    for i, (_, pattern) in enumerate(LAYERS):
        if re.match(pattern, module):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/design.md §10)")


def test_every_import_points_to_its_own_layer_or_below():
    upward = [
        f"{a} → {b} ({LAYERS[_layer(a)][0]} → {LAYERS[_layer(b)][0]})" for a, b, _ in _edges() if _layer(b) > _layer(a)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_imports_inside_functions_only_where_start_up_speed_needs_them():
    inner = sorted({a for a, _, top in _edges() if not top} - LAZY)
    assert not inner, (
        f"imports inside functions in {inner}: move them to the top (or, for start-up speed, add to LAZY and say why)"
    )


def test_the_module_level_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, top in _edges():
        if top and a != b and not a.startswith(b + "."):  # a package's own __init__ is not a cycle
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(
                    "import cycle: " + " → ".join(path[path.index(nxt) :] + [nxt]) if nxt in path else nxt
                )
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_importing_the_losses_loads_no_method():
    import subprocess
    import sys

    code = "import sys, mrbench.losses; print(sorted(m for m in sys.modules if m.startswith('mrbench.methods')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
