"""tvr's import graph, read from the source with ``ast``: no import cycle, and no module importing from a layer
above its own.

Every ``import`` statement counts, module-level and function-local alike: a function-local import only hides a
cycle until the function runs (``tvr.checkpoint -> tvr.models.convert -> tvr.models.heads ->
tvr.models.heads.hbi.estimator -> tvr.checkpoint`` did). Imports by string through ``importlib`` (the registries'
lazy filling) do not show here, and need not: a registry imports its own package only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tvr

# Module -> layer; a key covers the modules below it too, except for the top-level package (see layer_of).
# A module may import from its own layer and the layers below it, never from one above.
LAYERS = {
    # 0, foundations every layer may use: errors, the registry class, atomic file writing, distributed
    # gathers, the text of Hydra overrides. They know nothing of models, data or runs.
    "tvr": 0,  # the package root holds __version__ alone
    "tvr.errors": 0,
    "tvr.registry": 0,
    "tvr.atomic": 0,
    "tvr.distributed": 0,
    "tvr.overrides": 0,
    "tvr.options": 0,  # typed option declarations
    "tvr.config_checker": 0,  # the generic checks validation is written with
    # 1, the pieces: reading datasets and videos, and the model (backbone, towers, heads, losses, scoring) with
    # its file format, which the model reads itself (Retriever.from_checkpoint). Data and models are siblings:
    # the backbone states its input preprocessing in data.transforms' terms (no cycle allowed between them).
    "tvr.data": 1,
    "tvr.models": 1,
    "tvr.checkpoint": 1,
    # 2, evaluation: metrics, re-ranking and reports over what the models score on the data.
    "tvr.evaluation": 2,
    # 3, a run: configuration, start-up validation, the Lightning module and trainer, optimisation, resume, the
    # run folder's records and sweeps.
    "tvr.config": 3,
    "tvr.sweep": 3,
    "tvr.validation": 3,
    "tvr.optim": 3,
    "tvr.train_options": 3,
    "tvr.lit_module": 3,
    "tvr.builders": 3,
    "tvr.resume": 3,
    "tvr.run_folder": 3,
    # 4, commands: the console scripts and the tools' library code, which assemble everything below.
    "tvr.train": 4,
    "tvr.evaluate": 4,
    "tvr.results": 4,
    "tvr.conversion": 4,
    "tvr.explain": 4,
    "tvr.search": 4,
}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package in ``package_dir`` (``__init__.py`` names
    its package)."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file. ``from x import y`` imports the
    submodule ``x.y`` when there is one, else ``x``; relative imports are resolved against ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {name for name in found if name in known and name != module}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. A submodule's import does not add an edge to its parent
    packages (although Python runs their ``__init__`` first): a package's ``__init__`` importing its own
    submodules, which import each other by full name, is how packages are built, not a cycle."""
    files = module_files(package_dir)
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest import path from the component's first module back to itself, as a readable example."""
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & set(component)):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not a cycle")


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest key naming ``module`` or a package above it. The top-level package's key names
    that package alone, so that a new top-level module has no layer until someone places it."""
    top = module.split(".")[0]
    prefixes = [prefix for prefix in layers if module == prefix or (prefix != top and module.startswith(prefix + "."))]
    return layers[max(prefixes, key=len)] if prefixes else None


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [
        f"{module} (layer {layer_of(module, layers)}) imports {target} (layer {layer_of(target, layers)})"
        for module in sorted(graph)
        for target in sorted(graph[module])
        if layer_of(target, layers) > layer_of(module, layers)
    ]


def layering_report(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """One line per problem: a module without a layer, an import cycle, an upward import."""
    unplaced = [
        f"{module} has no layer: add it to LAYERS" for module in sorted(graph) if layer_of(module, layers) is None
    ]
    if unplaced:
        return unplaced
    cycles = [
        f"import cycle: {' -> '.join(cycle_through(graph, component))}" for component in strongly_connected(graph)
    ]
    return cycles + [f"upward import: {line}" for line in upward_imports(graph, layers)]


def test_tvr_has_no_import_cycle_and_no_upward_import():
    problems = layering_report(import_graph(Path(tvr.__file__).parent), LAYERS)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------- the walker itself, on a made-up package
def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_hidden_in_a_function_and_an_upward_import_are_reported(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "def save():\n    from pkg.high import run  # function-local\n",
            "pkg/high/__init__.py": "from . import entry\n",
            "pkg/high/entry.py": "import os\nfrom pkg import low\n\ndef run():\n    pass\n",
        },
    )
    graph = import_graph(package)
    assert graph == {
        "pkg": set(),
        "pkg.low": {"pkg.high"},
        "pkg.high": {"pkg.high.entry"},
        "pkg.high.entry": {"pkg.low"},
    }
    assert layering_report(graph, {"pkg": 0, "pkg.low": 0, "pkg.high": 1}) == [
        "import cycle: pkg.high -> pkg.high.entry -> pkg.low -> pkg.high",
        "upward import: pkg.low (layer 0) imports pkg.high (layer 1)",
    ]


def test_submodules_importing_each_other_through_their_package_are_no_cycle(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/heads/__init__.py": "from pkg.heads import a, b\nfrom pkg.heads.base import Base\n",
            "pkg/heads/base.py": "class Base:\n    pass\n",
            "pkg/heads/a.py": "from .base import Base\n",
            "pkg/heads/b.py": "from ..heads.a import Base\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.heads"] == {"pkg.heads.a", "pkg.heads.b", "pkg.heads.base"}
    assert graph["pkg.heads.a"] == {"pkg.heads.base"} and graph["pkg.heads.b"] == {"pkg.heads.a"}
    assert layering_report(graph, {"pkg": 0, "pkg.heads": 0}) == []


def test_a_module_without_a_layer_is_reported(tmp_path):
    package = write_package(tmp_path, {"pkg/__init__.py": "", "pkg/new.py": ""})
    assert layering_report(import_graph(package), {"pkg.new": 0}) == ["pkg has no layer: add it to LAYERS"]
