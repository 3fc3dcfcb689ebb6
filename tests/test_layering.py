"""Layering: ``vlmbed.models`` never imports the layers above it, and no module imports itself back.

Read from the source with ``ast`` (every import, at module level or inside a function), plus one fresh
interpreter that imports every module in a random order.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlmbed"
UPPER = ("vlmbed.data", "vlmbed.train", "vlmbed.eval", "vlmbed.serve", "vlmbed.cli", "vlmbed.objectives")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, top_level_only: bool = False) -> set[str]:
    """vlmbed modules that module ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in out if m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_models_import_no_upper_layer():
    bad = {name: sorted(m for m in imports(name) if m.startswith(UPPER))
           for name in MODULES if name.startswith("vlmbed.models")}
    assert not {k: v for k, v in bad.items() if v}, "vlmbed.models must not import data/train/eval/serve/cli"


def test_no_module_level_import_cycles():
    graph = {name: imports(name, top_level_only=True) - {name} for name in MODULES}
    # a package importing its own submodules is how packages expose names, not a cycle between layers
    graph = {k: {m for m in v if not k.startswith(m + ".")} for k, v in graph.items()}
    assert cycles(graph) == []


def test_models_have_no_cycles_even_through_lazy_imports():
    names = [n for n in MODULES if n.startswith("vlmbed.models")]
    graph = {n: {m for m in imports(n) if m.startswith("vlmbed.models") and not n.startswith(m + ".")} - {n}
             for n in names}
    assert cycles(graph) == [], "models/ modules import each other (e.g. embedder <-> lora)"


@pytest.mark.timeout(300)
def test_every_module_imports_in_a_random_order():
    order = sorted(MODULES)
    seed = random.randrange(10**6)
    random.Random(seed).shuffle(order)
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"import order seed {seed} failed:\n{proc.stderr[-3000:]}"
