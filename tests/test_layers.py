"""The import graph of src/csekit: no cycles, and no import from a lower layer to a higher one.

The layer order is read from the ``layers`` block of docs/architecture.md, so the document and
the code cannot drift apart. Every ``import`` statement counts, including lazy ones inside
functions (a cycle through a lazy import is still a cycle of responsibilities).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "csekit"
DOC = ROOT / "docs" / "architecture.md"


def layer_order(block_name: str = "layers") -> list[list[str]]:
    """Layers, lowest first; each a list of names (top-level modules or packages under csekit
    for ``layers``; the rooms of csekit.modeling for ``modeling-rooms``)."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(rf"```{block_name}\n(.*?)```", text, re.DOTALL)
    assert block, f"docs/architecture.md has no ```{block_name} block"
    return [line.split("#")[0].split() for line in block.group(1).splitlines()
            if line.split("#")[0].strip()]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """csekit modules imported by the module ``name`` at ``path`` (absolute and relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "csekit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "csekit":
                continue
            out.add(mod)
            for a in node.names:  # "from csekit import distributed" imports a module
                out.add(f"{mod}.{a.name}")
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    g: dict[str, set[str]] = {}
    for name, path in files.items():
        g[name] = {m for m in imports_of(path, name) if m in files and m != name}
    return g


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "csekit"


def test_every_module_has_a_layer() -> None:
    known = {n for layer in layer_order() for n in layer}
    missing = sorted({top(m) for m in graph()} - known)
    assert not missing, f"add these to the layers block of docs/architecture.md: {missing}"


def test_imports_only_go_down_the_layers() -> None:
    rank = {n: i for i, layer in enumerate(layer_order()) for n in layer}
    bad = [f"{a} (layer {rank[top(a)]}) imports {b} (layer {rank[top(b)]})"
           for a, deps in graph().items() for b in deps
           if top(a) != top(b) and rank[top(b)] > rank[top(a)]]
    assert not bad, "\n".join(sorted(bad))


def room(name: str) -> str | None:
    """The room of a module of csekit.modeling (None outside it, and for the package itself)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "modeling" else None


def test_modeling_rooms_import_only_down() -> None:
    """Inside modeling/, each room imports only itself and the rooms listed above it."""
    rank = {n: i for i, layer in enumerate(layer_order("modeling-rooms")) for n in layer}
    g = graph()
    missing = sorted({room(m) for m in g if room(m) is not None} - set(rank))
    assert not missing, f"add these to the modeling-rooms block of docs/architecture.md: {missing}"
    bad = [f"{a} ({room(a)}) imports {b} ({room(b)})"
           for a, deps in g.items() if room(a) is not None for b in deps
           if room(b) is not None and room(b) != room(a) and rank[room(b)] >= rank[room(a)]]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_catches_a_cycle_and_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """The checks can fail: a fake tree with a cycle and a losses -> training import."""
    fake = tmp_path / "csekit"
    (fake / "losses").mkdir(parents=True)
    (fake / "training").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "losses" / "__init__.py").write_text("")
    (fake / "training" / "__init__.py").write_text("")
    (fake / "losses" / "a.py").write_text("from csekit.training import b\n")
    (fake / "training" / "b.py").write_text("def f():\n    from csekit.losses import a\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    import pytest

    with pytest.raises(AssertionError, match="imports csekit.training"):
        test_imports_only_go_down_the_layers()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()
    # and a room of modeling/ that imports one below it in the order (saved -> loading)
    for sub in ("modeling", "modeling/saved", "modeling/loading"):
        (fake / sub).mkdir(parents=True, exist_ok=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "modeling" / "saved" / "folder.py").write_text(
        "from csekit.modeling.loading import load\n")
    (fake / "modeling" / "loading" / "load.py").write_text("")
    with pytest.raises(AssertionError, match="saved.folder \\(saved\\) imports"):
        test_modeling_rooms_import_only_down()
