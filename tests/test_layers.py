"""kvopt's layers: each module imports only modules of its own layer or the layers below.

The order is written once, in :data:`LAYERS` (bottom first); docs/development.md's Layout section shows
the same picture. Every import counts, wherever it is written:
at the top of a module, inside a function (a lazy import still ties the two modules
together) and under ``if TYPE_CHECKING:`` (the type is still a dependency). Within a
layer any import is allowed, but no import cycle is, anywhere.

What the walk cannot see: ``importlib.import_module`` with a name in a string. kvopt uses
it only at the very top (``kvopt/__init__.py``'s lazy public names and ``cli.SUBCOMMANDS``),
where nothing can be upward. There is no exception list.

``from kvopt.a import b`` counts as importing ``kvopt.a.b`` when that is a module, else
``kvopt.a``; a package's own ``__init__`` (run by Python before any of its submodules) is
not counted as imported by the submodules, as in import-linter and grimp.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Sequence
from pathlib import Path

from conftest import REPO

# The engine packages (kvopt/engines/<name>/) and the libraries only they may import.
ENGINE_PACKAGES = ("transformers", "llamacpp")
ENGINE_LIBRARIES = {"transformers", "llama_cpp", "gguf"}

# Bottom first. A name covers the module and, for a package, everything inside it.
# Names not (yet) in the tree are allowed: they reserve a module's place.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Vocabulary and helpers every layer may use; no measuring, no Optuna study.
    (
        "foundation",
        (
            "kvopt.errors",
            "kvopt.paths",
            "kvopt.env",
            "kvopt.metrics",
            "kvopt.attrs",
            "kvopt.interrupt",
            "kvopt.config",
            "kvopt.traffic",
            "kvopt.compose",
            # The engine registry: finds an engine by name (imports none of them itself).
            "kvopt.engines",
        ),
    ),
    # What is known or decided without running a model.
    (
        "knowledge",
        (
            "kvopt.space",
            "kvopt.predict",
            "kvopt.workload",
            "kvopt.select",
            "kvopt.machine",
            "kvopt.surrogate",
            "kvopt.quality",
            "kvopt.screen",
        ),
    ),
    # Clocks, memory readings and statistics (no model logic).
    ("measurement", ("kvopt.measure", "kvopt.failures")),
    # The engines: the interface, and each engine's loading, probing and timed calls.
    ("engines", ("kvopt.engines.base", *(f"kvopt.engines.{name}" for name in ENGINE_PACKAGES))),
    # The measurement protocol: drives any engine through its interface.
    ("protocol", ("kvopt.protocol",)),
    # One trial and the Optuna study around it (sampler and converge: the search's own modules).
    (
        "trial machinery",
        (
            "kvopt.trial",
            "kvopt.measurer",
            "kvopt.isolation",
            "kvopt.workers",
            "kvopt.study",
            "kvopt.storage",
            "kvopt.confirm",
            "kvopt.explore",
            "kvopt.sampler",
            "kvopt.converge",
        ),
    ),
    # A finished run described from its storage alone.
    ("run record", ("kvopt.stored",)),
    # Renderers of the run record.
    ("outputs", ("kvopt.report",)),
    ("orchestration", ("kvopt.runner",)),
    # The benchmark harness (scripts/kvopt_bench) sits above all of these, outside the package.
    (
        "entry points",
        ("kvopt", "kvopt.__main__", "kvopt.cli", "kvopt.api", "kvopt.sweep", "kvopt.info", "kvopt.commands"),
    ),
]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` (``root / package``): dotted name -> file."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str], package: str) -> set[str]:
    """The package's modules that module ``name`` (file ``path``) imports, wherever in the file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import kvopt.a.b`` of a name inside a module
                target = target.rpartition(".")[0]
            if target == package or target.startswith(package + "."):
                if target != name:
                    found.add(target)
    return found


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]], package: str) -> int | None:
    """The index of the layer that holds ``module``: its own name, or the package it is in.

    The top package's name stands for its ``__init__`` alone, not for everything inside.
    """
    best, best_len = None, -1
    for index, (_, names) in enumerate(layers):
        for name in names:
            inside = name != package and module.startswith(name + ".")
            if (module == name or inside) and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_problems(root: Path, package: str, layers: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """Every module without a layer, every upward import and every import cycle, one line each."""
    files = module_names(root, package)
    modules = set(files)
    graph = {name: imports_of(name, path, modules, package) for name, path in files.items()}
    problems = []
    for name in sorted(graph):
        own = layer_of(name, layers, package)
        if own is None:
            problems.append(f"{name}: in no layer; add it to LAYERS in tests/test_layers.py")
            continue
        for target in sorted(graph[name]):
            other = layer_of(target, layers, package)
            if other is not None and other > own:
                problems.append(f"{name} ({layers[own][0]}) imports {target} ({layers[other][0]}), a layer above it")
    for cycle in _cycles(graph):
        problems.append("import cycle among " + ", ".join(cycle))
    return problems


def test_kvopt_imports_only_downward_and_has_no_cycle():
    problems = layer_problems(REPO, "kvopt", LAYERS)
    assert not problems, "\n".join(problems)


def engine_problems(root: Path, package: str, engines: Sequence[str], libraries: set[str]) -> list[str]:
    """Every import of an engine package or an engine's library from outside that engine, one line each.

    The core uses engines only through ``<package>.engines.base`` and the registry; an engine
    imports neither another engine nor the core above the engine layer (the layer check).
    """
    files = module_names(root, package)
    modules = set(files)
    problems = []
    for name, path in sorted(files.items()):
        own = next((e for e in engines if _inside(name, f"{package}.engines.{e}")), None)
        for target in sorted(imports_of(name, path, modules, package)):
            other = next((e for e in engines if _inside(target, f"{package}.engines.{e}")), None)
            if other is not None and other != own:
                problems.append(f"{name} imports {target}: only the {other} engine's own modules may")
        if own is None:
            for library in sorted(_third_party_imports(path) & libraries):
                problems.append(f"{name} imports {library}: only an engine package may")
    return problems


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _third_party_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file (lazy ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


# Outside the engines, one module still reads with an engine's library, and why.
ENGINE_LIBRARY_EXCEPTIONS = {
    # A traffic file's prompt text is counted in tokens with the model's Hugging Face tokenizer,
    # while the config is validated (before any engine is chosen); GGUF traffic files give counts.
    "kvopt.traffic imports transformers: only an engine package may",
}


def test_only_an_engine_imports_its_package_and_libraries():
    problems = set(engine_problems(REPO, "kvopt", ENGINE_PACKAGES, ENGINE_LIBRARIES))
    assert problems == ENGINE_LIBRARY_EXCEPTIONS, "\n".join(sorted(problems ^ ENGINE_LIBRARY_EXCEPTIONS))


def test_the_engine_rule_catches_the_core_importing_an_engine(tmp_path: Path):
    _write_package(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/engines/__init__.py": "",
            "toy/engines/base.py": "",
            "toy/engines/a/__init__.py": "import heavy_lib\nfrom toy.engines import base\n",
            "toy/engines/b/__init__.py": "from toy.engines.a import heavy_lib\n",
            "toy/core.py": "def f():\n    import heavy_lib\n    from toy.engines.a import x\n",
        },
    )
    assert engine_problems(tmp_path, "toy", ("a", "b"), {"heavy_lib"}) == [
        "toy.core imports toy.engines.a: only the a engine's own modules may",
        "toy.core imports heavy_lib: only an engine package may",
        "toy.engines.b imports toy.engines.a: only the a engine's own modules may",
    ]


def test_every_layer_name_is_written_once():
    names = [n for _, names in LAYERS for n in names]
    assert len(names) == len(set(names))


def _write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


TOY_LAYERS = [("low", ("toy.base",)), ("middle", ("toy.mid",)), ("high", ("toy.top", "toy"))]


def test_the_check_catches_a_planted_upward_import_even_a_lazy_one(tmp_path: Path):
    _write_package(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/base.py": """
            def helper():
                from toy.top import main  # planted: the bottom reaches up, inside a function
                return main
        """,
            "toy/mid.py": "from toy import base\n",
            "toy/top.py": "from toy.mid import base\n\ndef main():\n    pass\n",
        },
    )
    assert layer_problems(tmp_path, "toy", TOY_LAYERS) == [
        "toy.base (low) imports toy.top (high), a layer above it",
        "import cycle among toy.base, toy.mid, toy.top",
    ]


def test_the_check_catches_type_checking_and_relative_imports_and_a_module_without_a_layer(tmp_path: Path):
    _write_package(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/base.py": "",
            "toy/mid.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .top import main
        """,
            "toy/top.py": "from . import base\n",
            "toy/stray.py": "import toy.base\n",
        },
    )
    assert layer_problems(tmp_path, "toy", TOY_LAYERS) == [
        "toy.mid (middle) imports toy.top (high), a layer above it",
        "toy.stray: in no layer; add it to LAYERS in tests/test_layers.py",
    ]


def test_a_clean_toy_package_passes(tmp_path: Path):
    _write_package(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/base.py": "import os\n",
            "toy/mid.py": "from toy.base import os\n",
            "toy/top.py": "import toy.mid\nfrom toy import base\n",
        },
    )
    assert layer_problems(tmp_path, "toy", TOY_LAYERS) == []
