"""The package layers and the absence of import cycles, read from the source with ``ast`` (nothing is imported).

Layers, bottom to top (a package imports only the packages listed for it, and itself)::

    common                      nothing else
    envs, world_models          common                 (envs and world_models never import each other)
    agents                      common, world_models   (not envs, not training)
    training                    common, envs, world_models, agents
    entry points                anything: train.py, eval.py, benchmarks/, scripts/, experiments/

No package imports an entry point. Every ``import`` statement counts, at module level or inside a
function, under ``if TYPE_CHECKING:`` or not: the layers are about dependencies, not about load order.
Imports by string (``importlib.import_module`` of a user-given name) are not seen.

The cycle check builds the graph module -> imported module over the intra-repo imports of the packages
and the entry points (``from pkg import name`` points at ``pkg.name`` when that is a module, else at
``pkg``; importing ``a.b.c`` is not counted as importing the package ``__init__`` of ``a`` or ``a.b``) and
asks for it to have no strongly connected component of more than one module and no self-import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "envs": {"common"},
    "world_models": {"common"},
    "agents": {"common", "world_models"},
    "training": {"common", "envs", "world_models", "agents"},
}
"""Packages each layered package may import besides itself."""

ENTRY_POINTS = ("train", "eval", "benchmarks", "scripts", "experiments")
"""Top-level names above every package: they may import anything, and nothing in ALLOWED may import them."""


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "envs.dmc"
    target: str  # imported intra-repo module, e.g. "envs.names"
    file: str  # repo-relative path
    line: int
    text: str  # the statement as written

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _python_files() -> list[Path]:
    files: list[Path] = []
    for top in [*ALLOWED, *ENTRY_POINTS]:
        if (ROOT / f"{top}.py").is_file():
            files.append(ROOT / f"{top}.py")
        elif (ROOT / top).is_dir():
            files += sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    return files


FILES = _python_files()
MODULES: dict[str, Path] = {_module_name(p): p for p in FILES}
TOP_LEVEL = set(ALLOWED) | set(ENTRY_POINTS)


def _resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the repo (None if not intra-repo)."""
    if name.split(".")[0] not in TOP_LEVEL:
        return None
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imports_of(path: Path) -> list[Import]:
    source = _module_name(path)
    rel = str(path.relative_to(ROOT))
    text = path.read_text()
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(text, filename=rel)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..pkg import y
                base = source.split(".") if is_package else source.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        stmt = ast.get_source_segment(text, node) or ""
        stmt = " ".join(stmt.split())
        for name in dict.fromkeys(names):
            target = _resolve(name)
            if target is not None:
                found.append(Import(source, target, rel, node.lineno, stmt))
    return found


IMPORTS: list[Import] = sorted((imp for p in FILES for imp in _imports_of(p)), key=lambda i: (i.file, i.line))


def _layer_violations() -> list[tuple[Import, str]]:
    bad = []
    for imp in IMPORTS:
        src, dst = imp.source.split(".")[0], imp.target.split(".")[0]
        if src not in ALLOWED or src == dst:
            continue
        if dst in ENTRY_POINTS:
            bad.append((imp, f"{src} imports the entry point {dst}"))
        elif dst not in ALLOWED[src]:
            allowed = ", ".join(sorted(ALLOWED[src])) or "nothing"
            bad.append((imp, f"{src} may import only {allowed}, not {dst}"))
    return bad


def _cycles() -> list[list[str]]:
    """Strongly connected components of the module graph with a cycle (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        scc.append(m)
                        if m == node:
                            break
                    if len(scc) > 1 or node in graph[node]:
                        sccs.append(sorted(scc))
    return sccs


def test_the_scan_sees_the_packages_and_their_imports():
    for package in ALLOWED:
        assert package in MODULES, f"{package}/__init__.py not found under {ROOT}"
    by_pair = {(i.source, i.target) for i in IMPORTS}
    assert ("envs.dmc", "envs.names") in by_pair  # from envs.names import name_key
    assert ("envs.registry", "envs.dmc") in by_pair  # an import inside a function
    assert ("training.checkpoint", "common.files") in by_pair


def test_packages_import_only_lower_layers():
    bad = [f"  {imp.where()}  [{why}]" for imp, why in _layer_violations()]
    if bad:
        layers = "common < envs, world_models < agents < training < entry points"
        pytest.fail(f"imports against the layers ({layers}):\n" + "\n".join(bad), pytrace=False)


def test_no_import_cycles():
    lines = []
    for scc in _cycles():
        members = set(scc)
        lines.append("cycle between " + ", ".join(scc) + ":")
        lines += [f"  {i.where()}" for i in IMPORTS if i.source in members and i.target in members]
    if lines:
        pytest.fail("import cycles between modules:\n" + "\n".join(lines), pytrace=False)
