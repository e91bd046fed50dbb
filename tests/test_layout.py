"""The package's architecture, read from its source: below the command lines no function takes the raw Hydra
config (typed sections go down), only `cnnlab.tracking` imports MLflow, and the modules' top-level imports have no
cycle."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "cnnlab"
CLIS = {"train.py", "evaluate.py", "predict.py", "pipeline.py", "report.py"}
# where the raw config legitimately arrives: its conversion into the typed job, and Hydra's callback API
TAKES_DICTCONFIG = {"config/compose.py", "tracking/sweep.py"}


def modules() -> dict[str, ast.Module]:
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
