"""The package's import graph, read statically: no import cycles, and the layers.

Every `import x`, `from x import y` and relative import in vllm_sdar/**/*.py
counts, wherever it stands (module level, inside a function, under
TYPE_CHECKING). `from pkg import name` is an edge to `pkg.name` when that is
a module (pkg/name.py or pkg/name/__init__.py), else to `pkg`. Importing
`a.b.c` also runs the `__init__` of `a` and `a.b`; those implicit edges are
left out, as the plugin's entry points in vllm_sdar/__init__.py import the
whole package on purpose (inside functions that vLLM calls).

Layers (docs: algorithm/__init__.py, engine/__init__.py):
- the algorithm (every module of vllm_sdar/algorithm/ but reference.py,
  hf_model.py and grammar_compile.py) imports no vLLM, not even through
  other vllm_sdar modules;
- the reference decoder (algorithm/reference.py) never reaches the engine
  glue (vllm_sdar.engine, vllm_sdar.serving);
- the engine (vllm_sdar/engine/*) never reaches the converter
  (vllm_sdar.convert) or the reference decoder.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "vllm_sdar"

# Rule (b), first part: which algorithm modules must stay free of vLLM.
# grammar_compile: two of vLLM's pure helpers (structured_output.utils:
# choice_as_grammar, grammar_is_likely_lark), so the reference decoder and the
# front end compile a constraint exactly as vLLM's backend does; no engine code.
ALGORITHM_ALLOWED_VLLM = {
    "vllm_sdar.algorithm.reference",
    "vllm_sdar.algorithm.hf_model",
    "vllm_sdar.algorithm.grammar_compile",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, name: str) -> Iterable[tuple[str, list[str]]]:
    """Every import in one file, as (module, names): ("x.y", []) for
    `import x.y`, ("x", ["y", "z"]) for `from x import y, z`, with relative
    imports made absolute."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # every node: function-level imports count too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            stem = node.module or ""
            if node.level:
                # Level 1 is this module's package (the package itself, for an __init__).
                base = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop]
                stem = ".".join(base + ([node.module] if node.module else []))
            yield stem, [alias.name for alias in node.names]


def build_graph(root: Path, package: str = PACKAGE) -> tuple[dict[str, set[str]], dict]:
    """(edges between package modules, external top-level names per module)."""
    modules = modules_of(root, package)

    def resolve(dotted: str) -> str:
        """The longest prefix of `dotted` that is a module of the package."""
        parts = dotted.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts)

    edges: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for stem, names in imports_of(path, mod):
            if stem.split(".")[0] != package:
                external[mod].add(stem.split(".")[0])
                continue
            # `from pkg import mod` -> pkg.mod when that is a module, else pkg;
            # `from pkg.mod import func` -> pkg.mod.
            targets = {f"{stem}.{n}" if f"{stem}.{n}" in modules else resolve(stem) for n in names}
            for target in targets or {resolve(stem)}:
                if target and target != mod:  # `from . import x` in an __init__ names itself
                    edges[mod].add(target)
    return edges, external


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle, [a, b, ..., a], per tangle (strongly connected component)."""
    return [_cycle_in(component, edges) for component in tangles(edges)]


def tangles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def _cycle_in(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & component):
                if child == start:
                    path = [node]  # node, its parent, ..., start
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {component}")  # unreachable for a real SCC


def path_to(
    edges: dict[str, set[str]], start: str, goal: Callable[[str], bool]
) -> list[str] | None:
    """The shortest import chain from `start` to a module for which goal() is true."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            if goal(node):
                chain = [node]
                while parents[chain[-1]] is not None:
                    chain.append(parents[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1]
            for child in sorted(edges[node]):
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return None


def _in(prefix: str) -> Callable[[str], bool]:
    """The module `prefix` and, if it is a package, everything under it."""
    return lambda mod: mod == prefix or mod.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict]:
    return build_graph(ROOT)


def test_graph_sees_the_package(graph) -> None:
    edges, external = graph
    # Sanity: the reader resolves `from pkg import mod`, relative and
    # function-level imports, or the rules below would pass vacuously.
    assert "vllm_sdar.algorithm.reference" in edges
    assert "vllm_sdar.algorithm.config" in edges["vllm_sdar.algorithm.reference"]
    assert "vllm_sdar.algorithm.hf_model" in edges["vllm_sdar.tools.tiny"]  # inside build()
    assert "vllm" in external["vllm_sdar.tools.selfcheck"]  # inside functions


def test_no_import_cycles(graph) -> None:
    edges, _ = graph
    report = [
        " -> ".join(_cycle_in(tangle, edges)) + f"  (tangle: {', '.join(sorted(tangle))})"
        for tangle in tangles(edges)
    ]
    assert not report, "import cycles:\n" + "\n".join(report)


def algorithm_modules(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        m for m in edges if _in("vllm_sdar.algorithm")(m) and m not in ALGORITHM_ALLOWED_VLLM
    )


def test_algorithm_imports_no_vllm(graph) -> None:
    edges, external = graph
    mods = algorithm_modules(edges)
    assert "vllm_sdar.algorithm.decoding" in mods and "vllm_sdar.algorithm.config" in mods
    bad = []
    for mod in mods:
        chain = path_to(edges, mod, lambda m: "vllm" in external[m])
        if chain:
            bad.append(" -> ".join([*chain, "vllm"]))
    assert not bad, "algorithm modules that import vLLM:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "sources, forbidden",
    [
        ("vllm_sdar.algorithm.reference", ["vllm_sdar.engine", "vllm_sdar.serving"]),
        ("vllm_sdar.engine", ["vllm_sdar.convert", "vllm_sdar.algorithm.reference"]),
    ],
    ids=["reference-not-engine-glue", "engine-not-convert-or-reference"],
)
def test_layers(graph, sources, forbidden) -> None:
    edges, _ = graph
    mods = sorted(m for m in edges if _in(sources)(m))
    assert mods
    bad = []
    for mod in mods:
        chain = path_to(edges, mod, lambda m: any(_in(f)(m) for f in forbidden))
        if chain:
            bad.append(" -> ".join(chain))
    assert not bad, f"imports that cross a layer (forbidden: {forbidden}):\n" + "\n".join(bad)


def test_checker_finds_a_cycle_and_a_crossing(tmp_path: Path) -> None:
    """The reader and the checks can fail: a made-up package with a cycle
    through a function-level relative import and `from pkg import mod`."""
    pkg = tmp_path / "vllm_sdar"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "convert").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "convert" / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text(
        "def f():\n    from ..convert import b\n    import vllm.x\n"
    )
    (pkg / "convert" / "b.py").write_text("from vllm_sdar.engine.a import f\n")
    edges, external = build_graph(tmp_path)
    assert edges["vllm_sdar.engine.a"] == {"vllm_sdar.convert.b"}
    assert external["vllm_sdar.engine.a"] == {"vllm"}
    assert find_cycles(edges) == [
        ["vllm_sdar.convert.b", "vllm_sdar.engine.a", "vllm_sdar.convert.b"]
    ]
    assert path_to(edges, "vllm_sdar.engine.a", _in("vllm_sdar.convert")) == [
        "vllm_sdar.engine.a",
        "vllm_sdar.convert.b",
    ]
