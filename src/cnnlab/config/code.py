"""The model-deciding code a job runs, as one digest for its run key.

A run key must change when code that can change the trained numbers changes, and not otherwise: editing a
comment or a docstring in cnnlab.core, or adding a layer or a recipe piece that a project does not use, must not
retrain that project (hours of CPU each), while changing a line its model runs must. So the digest is not of
cnnlab.core's files but of the definitions a job can reach, each as its syntax tree without docstrings (comments
are not in the tree):

- the roots: every name that code outside cnnlab.core imports from it (the training loop, the data reader, ...),
  and every cnnlab.core definition that the job's settings name (a layer spec's `type: RandomPadShift`);
- from each definition (a function, a class, a module-level assignment or import), the cnnlab.core definitions
  it refers to, in its module or through an import from another cnnlab.core module, at any depth.

cnnlab's own layers are found by name through a registry that their decorator fills (cnnlab.core.layers), so a
layer no project names is reached by no project. Statements of a reached module that define nothing (a
registration call, say) count for every job that reaches that module. Reaching more than is run is safe (a
retrain too many); reaching less is not, so a name that could mean a cnnlab.core definition counts as one, and
a module named without an attribute counts whole."""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGE = "cnnlab.core"
LOOSE = ""  # a module's statements that define nothing, as a name to reach
SRC = Path(__file__).resolve().parents[1]  # src/cnnlab
NAMES_CORE = re.compile(r"\bcore\b")  # a module without the word `core` imports nothing from cnnlab.core


@dataclass
class Module:
    """One cnnlab.core module: its top-level definitions by name, the statements that define nothing, and what
    its imports bind (a local name -> (module, name), or (module, None) for a whole module)."""

    name: str
    definitions: dict[str, list[ast.stmt]] = field(default_factory=dict)
    loose: list[ast.stmt] = field(default_factory=list)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def without_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` without the docstrings of its module, classes and functions (a body left empty gets `pass`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _import_bindings(node: ast.stmt, module: str) -> dict[str, tuple[str, str | None]]:
    """What an import statement binds, for imports of cnnlab.core modules only."""
    bound: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
            target = f"{node.module}.{alias.name}"
            if node.module == PACKAGE:  # from cnnlab.core import loop
                bound[alias.asname or alias.name] = (target, None)
            elif node.module.startswith(PACKAGE + ".") and alias.name != "*":
                bound[alias.asname or alias.name] = (node.module, alias.name)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                # `import cnnlab.core.layers` binds `cnnlab`: the whole module, under its dotted name
                bound[alias.asname or alias.name] = (alias.name, None)
    return bound


def _bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement defines."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
        if isinstance(node, ast.AnnAssign | ast.AugAssign) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def parse_module(name: str, source: str) -> Module:
    module = Module(name)
    for node in without_docstrings(ast.parse(source)).body:
        names = _bound_names(node)
        module.imports.update(_import_bindings(node, name))
        if not names:
            module.loose.append(node)
        for bound in names:
            module.definitions.setdefault(bound, []).append(node)
    return module


def _references(nodes: Iterable[ast.AST], scope: dict[str, tuple[str, str | None]], own: Module | None
                ) -> set[tuple[str, str | None]]:
    """The cnnlab.core definitions `nodes` refer to: names of `own` module, names imported from cnnlab.core (also
    by imports inside functions), and `module.attribute` where `module` is an imported cnnlab.core module.

    One walk of the trees gathers the imports, attributes and names; they are resolved after it, once every
    import (an import inside a function may follow a use) is in `scope`. Every job process reads the whole code
    base (`installed_code`), so this walk is on each job's start-up."""
    scope = dict(scope)
    found: set[tuple[str, str | None]] = set()
    attributes: list[ast.Attribute] = []
    names: list[ast.Name] = []
    for node in nodes:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name):
                names.append(inner)
            elif isinstance(inner, ast.Attribute):
                attributes.append(inner)
            elif isinstance(inner, ast.Import | ast.ImportFrom):
                bound = _import_bindings(inner, "")
                scope.update(bound)
                if isinstance(inner, ast.Import):  # `import cnnlab.core.models` for what importing it does
                    found |= {(module, LOOSE) for module, _ in bound.values()}
    bases = set()  # the `module` of each `module.attribute`, which names the attribute, not the whole module
    for inner in attributes:
        chain, base = [inner.attr], inner.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in scope and scope[base.id][1] is None:
            bases.add(id(base))
            dotted = ".".join([scope[base.id][0], *reversed(chain)])
            found.add(_split_dotted(dotted))
    for inner in names:
        if id(inner) not in bases:
            if inner.id in scope:
                found.add(scope[inner.id])
            elif own is not None and inner.id in own.definitions:
                found.add((own.name, inner.id))
    return found


def _split_dotted(dotted: str) -> tuple[str, str | None]:
    """`cnnlab.core.loop.train` -> (cnnlab.core.loop, train); `cnnlab.core.layers` -> (cnnlab.core.layers, None)."""
    parts = dotted.split(".")
    if len(parts) > 3:
        return ".".join(parts[:3]), parts[3]
    return ".".join(parts[:3]), None


@dataclass
class CodeBase:
    """cnnlab's source as far as run keys are concerned: cnnlab.core's modules, and the roots that the rest of
    cnnlab imports from them."""

    modules: dict[str, Module]
    roots: set[tuple[str, str | None]]
    # a job computes its result key and its group key (twice each): the same definitions reached, one digest
    _digests: dict[frozenset[tuple[str, str | None]], str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, src: Path = SRC) -> CodeBase:
        """The code base under `src` (the folder of the cnnlab package)."""
        modules, roots = {}, set()
        for path in sorted(src.rglob("*.py")):
            parts = path.relative_to(src.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            source = path.read_text()
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                modules[name] = parse_module(name, source)
            elif NAMES_CORE.search(source):  # the others name no cnnlab.core definition
                roots |= _references([ast.parse(source)], {}, None)
        return cls(modules, roots)

    def named(self, values: Iterable[str]) -> set[tuple[str, str | None]]:
        """The cnnlab.core definitions that these setting values name (a layer spec's `type`, say)."""
        wanted = set(values)
        return {(module.name, name) for module in self.modules.values() for name in module.definitions
                if name in wanted}

    def reached(self, roots: Iterable[tuple[str, str | None]]) -> dict[str, set[str]]:
        """Every definition reachable from `roots`, by module (a module reached whole lists all its names)."""
        seen: dict[str, set[str]] = {}
        todo = list(roots)
        while todo:
            module_name, name = todo.pop()
            module = self.modules.get(module_name)
            if module is None:
                continue
            names = list(module.definitions) if name is None else [] if name == LOOSE else [name]
            fresh = [n for n in names if n in module.definitions and n not in seen.get(module_name, set())]
            if module_name not in seen:
                seen[module_name] = set()
                todo.extend(_references(module.loose, module.imports, module))
            for n in fresh:
                seen[module_name].add(n)
                todo.extend(_references(module.definitions[n], module.imports, module))
        return seen

    def digest(self, setting_values: Iterable[str]) -> str:
        """sha256 of the docstring-free syntax of every definition a job with these setting values reaches."""
        named = frozenset(self.named(setting_values))
        if named not in self._digests:
            self._digests[named] = self._digest_of(self.reached(self.roots | named))
        return self._digests[named]

    def _digest_of(self, reached: dict[str, set[str]]) -> str:
        digest = hashlib.sha256()
        for module_name in sorted(reached):
            module = self.modules[module_name]
            parts = [("", module.loose)] + [(n, module.definitions[n]) for n in sorted(reached[module_name])]
            for name, nodes in parts:
                text = "\n".join(ast.dump(node) for node in nodes)
                digest.update(f"{module_name}:{name}\0{text}\0".encode())
        return digest.hexdigest()


@cache
def installed_code() -> CodeBase:
    return CodeBase.read()


def strings(value: object) -> Iterable[str]:
    """Every string in a nested settings value (where a definition's name can stand: a layer spec's type, a Keras
    registered name)."""
    if isinstance(value, str):
        yield value
        if ">" in value:  # a Keras registered name, `cnnlab>RandomPadShift`
            yield value.rsplit(">", 1)[-1]
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)
