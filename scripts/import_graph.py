"""Print the import graph of the grafs package: circles, imports that point back up the
layers, and imports of another module's private names.

    python scripts/import_graph.py            # a summary, then every finding
    python scripts/import_graph.py --check    # exit 1 when there is a circle or a private import

An import inside a function body counts (it still ties the two modules together); such
imports are marked "lazy" in the listing.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "grafs"

# Bottom to top; a module may import its own layer and the layers below it. (integrations
# sits above searching: its Lightning and Hugging Face callbacks drive a grafs.Searcher.)
LAYERS = ["errors", "files", "ops", "grammar", "compiler", "runtime", "activations", "plot",
          "callbacks", "searching", "integrations", "models", "tasks", "protocol", "testing", "cli",
          "__main__", "__init__"]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported dotted name lives in (a name may be an attribute of a module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str, path: Path, modules: dict[str, Path]):
    """Yield (target module, imported names, lazy) for every grafs import in a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    lazy_nodes, typing_only = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                typing_only.add(id(inner))   # annotations only: no import at run time
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lazy_nodes.add(id(inner))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, modules)
                if target:
                    yield target, [], lazy
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from grafs.x import submodule`
                    yield sub, [], lazy
                else:
                    target = resolve(base, modules)
                    if target:
                        yield target, [alias.name], lazy


def layer_of(mod: str) -> int:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS.index(key) if key in LAYERS else len(LAYERS)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def is_package_init(mod: str, modules: dict[str, Path]) -> bool:
    return modules[mod].name == "__init__.py"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 on a circle or a private import")
    args = ap.parse_args(argv)
    modules = all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    edges, private, backup = [], [], []
    for mod, path in modules.items():
        graph[mod]
        for target, names, lazy in imports_of(mod, path, modules):
            if target == mod:
                continue
            # A package's __init__ re-exporting its own submodules is not an upward arrow.
            parent_init = is_package_init(mod, modules) and target.startswith(mod + ".")
            edges.append((mod, target, lazy))
            if not parent_init:
                graph[mod].add(target)
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    private.append((mod, target, name))
            if layer_of(target) > layer_of(mod) and not parent_init:
                backup.append((mod, target, lazy))
    circles = strongly_connected(graph)
    lines = sum(len(p.read_text().splitlines()) for p in modules.values())
    print(f"grafs/: {len(modules)} modules, {lines} lines, {len(edges)} import arrows "
          f"({sum(1 for e in edges if e[2])} lazy), {len(backup)} back up the layers, "
          f"{len(circles)} circles, {len(private)} private cross-module imports")
    for comp in circles:
        print("circle:", " <-> ".join(comp))
    for mod, target, lazy in sorted(set(backup)):
        print(f"back up: {mod} -> {target}{' (lazy)' if lazy else ''}")
    for mod, target, name in sorted(set(private)):
        print(f"private: {mod} imports {target}.{name}")
    return 1 if args.check and (circles or private) else 0


if __name__ == "__main__":
    sys.exit(main())
