"""The package's architecture, read from its source: below the command lines no function takes the raw Hydra
config (typed sections go down), only `cnnlab.tracking` imports MLflow, and every import of cnnlab's own modules
(at the top of a module or inside a function) goes down the declared package order, with no cycle between
modules, and no test file imports another."""

from __future__ import annotations

import ast
from functools import cache

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "cnnlab"
CLIS = {"train.py", "evaluate.py", "predict.py", "pipeline.py", "report.py"}
# where the raw config legitimately arrives: its conversion into the typed job, and Hydra's callback API
TAKES_DICTCONFIG = {"config/compose.py", "tracking/sweep.py"}
# cnnlab's packages from the bottom up (docs/architecture.md draws it): a module imports modules of its own entry
# and of the entries below it, never above. The CLIs are one entry: they share cli.py, the report reads the
# pipeline's params.
ORDER = [
    {"cnnlab", "cnnlab.errors"},  # the package's version; UserError
    {"cnnlab.config"},  # the typed config, composed, and the run key
    {"cnnlab.core"},  # what decides a trained model
    {"cnnlab.run"},  # a run's state, data, files and results
    {"cnnlab.tracking"},  # MLflow
    {"cnnlab.search"},  # a search job's Optuna trial
    {"cnnlab.job"},  # the job's checks and steps, in order
    {"cnnlab.cli", "cnnlab.train", "cnnlab.evaluate", "cnnlab.predict", "cnnlab.pipeline", "cnnlab.report"},
]


@cache
def modules() -> dict[str, ast.Module]:
    """cnnlab's modules by path, parsed once a test process (the tests here read the trees, none changes one)."""
    return {p.relative_to(PACKAGE).as_posix(): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def test_no_function_below_the_clis_takes_a_dictconfig() -> None:
    offenders = []
    for name, tree in modules().items():
        if name in CLIS or name in TAKES_DICTCONFIG:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                if any(a.annotation is not None and "DictConfig" in ast.unparse(a.annotation) for a in arguments):
                    offenders.append(f"{name}:{node.lineno} {node.name}")
    assert offenders == []


def imported(tree: ast.Module, top_level_only: bool = False) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_tracking_package_imports_mlflow() -> None:
    importers = sorted(name for name, tree in modules().items()
                       if any(m == "mlflow" or m.startswith("mlflow.") for m in imported(tree)))
    assert importers and all(name.startswith("tracking/") for name in importers), importers
    plugin = ast.parse((ROOT / "src" / "hydra_plugins" / "cnnlab_optuna" / "optuna_search.py").read_text())
    assert not any(m.startswith("mlflow") for m in imported(plugin))


def dotted_modules() -> dict[str, tuple[ast.Module, str]]:
    """cnnlab's modules by dotted name (a package by its own: `cnnlab.core` is core/__init__.py), each with its
    syntax tree and the package it is in (a package is in itself)."""
    found = {}
    for name, tree in modules().items():
        parts = ["cnnlab", *name.removesuffix(".py").split("/")]
        package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if package else parts)
        found[module] = (tree, module if package else module.rpartition(".")[0])
    return found


def own_imports(module: str, tree: ast.Module, package: str, known: set[str]) -> set[tuple[str, int]]:
    """Every cnnlab module `module` imports, with the line: at the top, inside functions, under TYPE_CHECKING.
    `from cnnlab.x import y` imports cnnlab.x.y when that is a module, else cnnlab.x; a relative import is
    resolved against `package`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add((full if full in known else base, node.lineno))
    return {(name, line) for name, line in found if name in known and name != module}


def import_graph() -> dict[str, set[tuple[str, int]]]:
    """Each cnnlab module -> the cnnlab modules it imports (with the line)."""
    trees = dotted_modules()
    return {module: own_imports(module, tree, package, set(trees)) for module, (tree, package) in trees.items()}


def level(module: str) -> int | None:
    """The module's place in ORDER: that of its own name or of the package it is in."""
    for i, entry in enumerate(ORDER):
        if module in entry or ".".join(module.split(".")[:2]) in entry:
            return i
    return None


def test_every_import_goes_down_the_package_order() -> None:
    graph = import_graph()
    unplaced = sorted(module for module in graph if level(module) is None)
    assert unplaced == [], f"modules in no entry of ORDER: {unplaced}"
    upward = [f"{module}:{line} imports {other}" for module, imports in sorted(graph.items())
              for other, line in sorted(imports, key=lambda item: item[1]) if level(other) > level(module)]
    assert upward == [], "imports against the package order:\n" + "\n".join(upward)


def test_imports_have_no_cycle_counting_those_inside_functions() -> None:
    graph = {module: {other for other, _ in imports} for module, imports in import_graph().items()}
    done: set[str] = set()
    cycles = []

    def visit(path: list[str]) -> None:
        for other in sorted(graph[path[-1]]):
            if other in path:
                cycles.append(" -> ".join([*path[path.index(other):], other]))
            elif other not in done:
                visit([*path, other])
        done.add(path[-1])

    for module in sorted(graph):
        if module not in done:
            visit([module])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def first_imports_inside_functions(tree: ast.Module) -> set[int]:
    """The line of each import inside a function that does not follow another import (the first of a group)."""
    firsts = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(function):
            for block in (getattr(node, name, None) for name in ("body", "orelse", "finalbody")):
                previous = None
                for statement in block if isinstance(block, list) else []:
                    if isinstance(statement, ast.Import | ast.ImportFrom) \
                            and not isinstance(previous, ast.Import | ast.ImportFrom):
                        firsts.add(statement.lineno)
                    previous = statement
    return firsts


def test_an_import_inside_a_function_says_why() -> None:
    """An import put off into a function (Keras until the backend is chosen, MLflow or matplotlib past a fast
    refusal) says why in a comment on its line or the line above, the first of a group of imports; cnnlab.core's
    are left as they are (the run key hashes their syntax)."""
    silent = []
    for name, tree in modules().items():
        if name.startswith("core/"):
            continue
        lines = (PACKAGE / name).read_text().splitlines()
        silent += [f"{name}:{line} {lines[line - 1].strip()}" for line in sorted(first_imports_inside_functions(tree))
                   if "#" not in lines[line - 1] and not lines[line - 2].lstrip().startswith("#")]
    assert silent == [], "imports inside functions without their reason:\n" + "\n".join(silent)


def test_top_level_imports_have_no_cycle() -> None:
    trees = modules()
    dotted = {("cnnlab." + name.removesuffix(".py").replace("/", ".")).removesuffix(".__init__"): tree
              for name, tree in trees.items()}
    graph = {module: {m for m in imported(tree, top_level_only=True) if m in dotted and m != module}
             for module, tree in dotted.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for other in sorted(graph[module]):
            assert seen.get(other) != 1, " -> ".join([*path, module, other])
            if other not in seen:
                visit(other, [*path, module])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [])


def imported_test_modules(tree: ast.Module) -> set[str]:
    """The test files a module imports (`tests.test_x`, `from tests import test_x`, `from .test_x import y`),
    at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tests.test_")}
        elif isinstance(node, ast.ImportFrom):
            module = ("tests." if node.level else "") + (node.module or "")
            if module.rstrip(".") == "tests":
                found |= {f"tests.{alias.name}" for alias in node.names if alias.name.startswith("test_")}
            elif module.startswith("tests.test_"):
                found.add(".".join(module.split(".")[:2]))
    return found


def test_no_test_file_imports_another() -> None:
    """What test files share lives in tests/conftest.py or tests/support.py: a test file imported by another
    runs its own tests' module code there and ties the two together."""
    sample = ast.parse("from tests.test_a import b\nimport tests.test_c\nfrom . import test_d, support\n"
                       "from .test_e import f\nfrom tests.support import g\nfrom tests import conftest\n"
                       "def h():\n    from tests.test_i import j\n")
    assert imported_test_modules(sample) == {"tests.test_a", "tests.test_c", "tests.test_d", "tests.test_e",
                                             "tests.test_i"}, "the check sees every form"
    importing = {p.name: sorted(imported_test_modules(ast.parse(p.read_text())))
                 for p in sorted((ROOT / "tests").glob("test_*.py"))}
    assert {name: found for name, found in importing.items() if found} == {}
