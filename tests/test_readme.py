"""README.md and the documentation stay usable: every command a reader is told to run exists and its options parse,
every config they name exists, every relative link resolves inside the repository, the config groups and the
module layout they list are the tree's. Nothing here asserts a sentence."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CONF, ROOT

DOCS = ROOT / "docs"
# what a reader reads: the front door, the site's pages, and the benchmark notes the site links to
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]
TEXT = {page: page.read_text() for page in PAGES}
ALL = "\n".join(TEXT.values())
FENCE = re.compile(r"^( *)```(\w+)([^\n]*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
GROUP_LINE = re.compile(r"^- `([\w/]+)/` \(([^)]*)\)", re.MULTILINE)
# the docs' examples of a refused command name an option that must not exist
BAD_EXAMPLES = {("augmentation", "nosuch")}
# programs a reader runs that are not this project's or its dependencies' (nothing of theirs to parse here)
EXTERNAL = {"git", "curl", "createdb", "pip", "cd", "export", ".", "mkdocs"}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def example_files() -> dict[str, str]:
    """The worked example's files (docs/configs.md: fences titled with their path in the repository)."""
    files = {}
    for text in TEXT.values():
        for _, _, info, body in FENCE.findall(text):
            title = re.search(r'title="([^"]+)"', info)
            if title:
                files[title[1]] = body
    return files


EXAMPLES = example_files()


def _exists(group: str, option: str) -> bool:
    """A file of conf/ or of the worked example, or a config a Hydra plugin registers (hydra/launcher=submitit_local).
    """
    if (CONF / group / f"{option}.yaml").is_file() or f"conf/{group}/{option}.yaml" in EXAMPLES:
        return True
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which register their configs
    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {})
    return f"{option}.yaml" in node


def _options(listed: str) -> set[str]:
    """`a`, `b`, `p00`…`p12` -> {a, b, p00, ..., p12}."""
    options: set[str] = set()
    for first, last in re.findall(r"`p(\d+)`…`p(\d+)`", listed):
        options |= {f"p{i:02d}" for i in range(int(first), int(last) + 1)}
    options |= set(re.findall(r"`([\w.-]+)`", re.sub(r"`p\d+`…`p\d+`", "", listed)))
    return options


def test_the_listed_config_groups_and_options_are_exactly_conf() -> None:
    listed = {group: _options(options) for group, options in GROUP_LINE.findall(TEXT[DOCS / "configs.md"])}
    listed = {group: options for group, options in listed.items() if options}  # local/: git-ignored, no options
    on_disk: dict[str, set[str]] = {}
    for path in CONF.rglob("*.yaml"):
        group = path.parent.relative_to(CONF).as_posix()
        if group != ".":
            on_disk.setdefault(group, set()).add(path.stem)
    assert listed == on_disk


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_config_a_page_names_exists(page: Path) -> None:
    text = TEXT[page]
    named = re.findall(r"(?<![\w.])(data|model|augmentation|training|tracking|project|hparams_search|hydra/launcher"
                       r"|hydra/sweeper)=([\w,]+)", text)
    for group, options in named:
        for option in options.split(","):
            if option == "glob":
                continue
            if (group, option) in BAD_EXAMPLES:
                assert not _exists(group, option), f"{group}={option} is the docs' example of an unknown option"
            else:
                assert _exists(group, option), f"{_name(page)}: {group}={option}"
    for name in re.findall(r"`(conf/[\w/.*-]+)`", text):
        if not name.startswith("conf/local/default") and name not in EXAMPLES:
            assert list(ROOT.glob(name.rstrip("/"))), f"{_name(page)}: {name}"


def test_the_pages_name_configs_and_commands() -> None:
    """The patterns of the tests here find what they check (a changed format would make them check nothing)."""
    assert len(re.findall(r"(?<![\w.])project=\w+", ALL)) > 20
    assert len(list(commands())) > 60
    assert {"conf/augmentation/flip_contrast.yaml", "conf/model/p13.yaml", "conf/project/p13.yaml"} <= set(EXAMPLES)


# --- links ----------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    from markdown.extensions.toc import slugify

    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slugify(heading.strip(), "-") for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    for link in LINK.findall(TEXT[page]):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):
            continue  # a URL
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{_name(page)}: {link} leaves the repository"
        assert target.exists(), f"{_name(page)}: {link} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{_name(page)}: {link}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_a_page_points_at_nothing_outside_the_repository_or_on_this_machine(page: Path) -> None:
    text = TEXT[page]
    for path in re.findall(r"(?:\.\./)+\w[\w.-]+[\w./-]*", text):  # not the unsafe project id `../x` it lists
        assert (page.parent / path).resolve().is_relative_to(ROOT), f"{_name(page)}: {path}"
    machine = re.findall(r"(?<![\w.:/~-])/(?:home|Users|root|work|mnt/data)/[\w.-]+", text)
    assert not machine, f"{_name(page)}: {machine}"


def test_the_tests_a_page_names_exist() -> None:
    named = set(re.findall(r"(test_\w+\.py)::(test_\w+)", ALL))
    assert named, "docs/reliability.md names the tests that show each fault"
    for module, test in named:
        source = ROOT / "tests" / module
        assert source.is_file(), module
        assert re.search(rf"^def {test}\(", source.read_text(), re.MULTILINE), f"{module}::{test}"


def test_the_readme_stays_a_front_door() -> None:
    """README is the way in: short, and one click from it to adding a project, comparing runs and the results."""
    readme = TEXT[ROOT / "README.md"]
    assert len(readme.splitlines()) <= 250
    links = set(LINK.findall(readme))
    for target in ("docs/configs.md#adding-an-augmentation-a-model-a-project",
                   "docs/tracking.md#compare-runs-click-by-click", "docs/results.md"):
        assert target in links, target


# --- the layout -----------------------------------------------------------------------------------------------------

def test_the_layout_names_every_module_and_package_there_is() -> None:
    """docs/architecture.md lists src/cnnlab's packages and modules, indented as nested: exactly the tree."""
    section = TEXT[DOCS / "architecture.md"].split("## Layout\n", 1)[1]
    block = FENCE.search(section)[4]
    listed, stack = set(), []
    for line in block.splitlines():
        match = re.match(r"^( *)([\w./]+)\s", line + " ")
        if not match:
            continue
        depth, name = len(match[1]) // 2, match[2]
        stack[depth:] = [name]
        listed.add("".join(stack))
    package = ROOT / "src" / "cnnlab"
    on_disk = {f"src/cnnlab/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
               if p.name != "__init__.py"}
    on_disk |= {f"src/cnnlab/{p.relative_to(package).as_posix()}/" for p in package.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    named = {name for name in listed if name.startswith("src/cnnlab/") and name != "src/cnnlab/"}
    assert named == on_disk


# --- commands -------------------------------------------------------------------------------------------------------

def commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every command in the pages' shell blocks: continuations joined, comments and `VAR=value`
    prefixes dropped, `&&` and `|` split, <placeholders> filled in."""
    for page, text in TEXT.items():
        for _, lang, _, body in FENCE.findall(text):
            if lang not in ("bash", "sh", "console"):
                continue
            body = re.sub(r"\\\n\s*", " ", body)
            body = re.sub(r"\|\s*\n\s*", "| ", body)
            for line in body.splitlines():
                line = re.sub(r"<[a-z][a-z ]*>", "PLACEHOLDER", line)
                words = shlex.split(line, comments=True)
                argv: list[str] = []
                for word in [*words, "&&"]:
                    if word in ("&&", "|", ";"):
                        while argv and re.match(r"^[A-Z_]+=", argv[0]):
                            argv.pop(0)
                        if argv:
                            yield f"{_name(page)}: {line.strip()}", argv
                        argv = []
                    else:
                        argv.append(word)


def _argparse_of(source: Path) -> argparse.ArgumentParser:
    """The parser a script's main() builds: its `parser = argparse.ArgumentParser(...)` and `parser.add_argument`
    statements, and those of the groups it makes (`group = parser.add_mutually_exclusive_group()`,
    `group.add_argument`), run on their own (nothing else of the script is imported or run)."""
    module = ast.parse(source.read_text())
    main = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    constants = [s for s in module.body if isinstance(s, ast.Assign) and all(
        isinstance(t, ast.Name) and t.id.isupper() for t in s.targets)]  # MAX_PIXELS and the like, used in help
    names, statements = {"parser"}, list(constants)
    for statement in main.body:
        used = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}
        if used & names and "parse_args" not in ast.unparse(statement):
            statements.append(statement)
            if isinstance(statement, ast.Assign):  # the parser, or a group of its arguments
                names |= {t.id for t in statement.targets if isinstance(t, ast.Name)}
    scope = {"argparse": argparse, "ArgumentParser": argparse.ArgumentParser, "Path": Path, "__doc__": ""}
    exec(compile(ast.Module(statements, []), str(source), "exec"), scope)  # noqa: S102
    return scope["parser"]


def _parses(parser: argparse.ArgumentParser, args: list[str]) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as err:
        raise AssertionError(f"{parser.prog} {args}: refused") from err


@pytest.fixture(scope="module")
def conf_with_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conf/ plus the worked example's files: commands that train P13 compose as they will once it is written."""
    conf = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    for name, text in EXAMPLES.items():
        (conf.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (conf.parent / name).write_text(text)
    return conf


def _hydra_app(module: str, args: list[str], conf: Path) -> None:
    """`python -m cnnlab.train|evaluate [-m] overrides`: the overrides parse; a single run's compose and type-check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config.compose import check_composed, compose

    overrides = [a for a in args if a not in ("-m", "--multirun")]
    assert all("=" in o for o in overrides), f"{module}: {overrides}"
    single = []  # the first job of a sweep (a list's first value; glob() left to the default project)
    for override, text in zip(OverridesParser.create().parse_overrides(overrides), overrides, strict=True):
        if text.startswith("hydra"):
            continue  # Hydra's own keys: the launcher's and the sweeper's
        if override.is_sweep_override():
            if "(" not in text:
                key, values = text.split("=", 1)
                single.append(f"{key}={values.split(',')[0]}")
        else:
            single.append(text)
    check_composed(compose(single, config_dir=conf), single)


def _click(group, prog: str, args: list[str]) -> None:
    """A click command line parses (options, their types, sub-commands), without running anything."""
    import click

    def remaining(ctx: click.Context) -> list[str]:  # a group's sub-command and its arguments
        return [*getattr(ctx, "_protected_args", []), *ctx.args]

    ctx = group.make_context(prog, list(args))
    command: click.Command = group
    while isinstance(command, click.Group) and remaining(ctx):
        name, command, rest = command.resolve_command(ctx, remaining(ctx))
        ctx = command.make_context(name, rest, parent=ctx)


def check_command(argv: list[str], conf: Path) -> None:
    program, *args = argv
    if program in EXTERNAL:
        return
    if program == "bash":
        assert (ROOT / args[0]).is_file(), args[0]
    elif program in ("python", "python3"):
        if args[0] == "-c":
            compile(args[1], "<python -c>", "exec")
        elif args[0] == "-m":
            module, rest = args[1], args[2:]
            assert importlib.util.find_spec(module), module
            if module in ("cnnlab.train", "cnnlab.evaluate"):
                _hydra_app(module, rest, conf)
            elif module.startswith("cnnlab."):
                _parses(_argparse_of(Path(importlib.util.find_spec(module).origin)), rest)
        else:
            script = ROOT / args[0]
            assert script.is_file(), args[0]
            _parses(_argparse_of(script), args[1:])
    elif program == "dvc":
        from dvc.cli import parse_args

        parse_args(args)
    elif program == "mlflow":
        from mlflow.cli import cli

        _click(cli, "mlflow", args)
    elif program == "optuna":
        from optuna.cli import _get_parser, _preprocess_argv

        _parses(_get_parser()[0], _preprocess_argv([program, *args]))
    else:
        raise AssertionError(f"{program}: not a command the docs should tell a reader to run")


@pytest.mark.slow
def test_every_command_exists_and_its_options_parse(conf_with_examples: Path) -> None:
    for where, argv in commands():
        try:
            check_command(argv, conf_with_examples)
        except Exception as err:
            raise AssertionError(f"{where}\n  -> {type(err).__name__}: {err}") from err


# DVC experiments: the three ways DVC runs one in a temporary copy and applies nothing to the work tree
KEEPS_THE_WORK_TREE = {"--temp", "--queue", "--run-all"}


def experiment_runs() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every `dvc exp run` a reader may copy: a shell block's command, or a code span in the text
    with options (a bare `dvc exp run` in a sentence names the command)."""
    for where, argv in commands():
        if argv[:3] == ["dvc", "exp", "run"]:
            yield where, argv
    for page, text in TEXT.items():
        for span in re.findall(r"`(dvc exp run [^`]+)`", FENCE.sub("", text)):
            yield f"{_name(page)}: {span}", shlex.split(span)


def test_no_dvc_experiment_a_page_gives_overwrites_the_published_results() -> None:
    """The rule: every `dvc exp run` the pages give has `--temp`, `--queue` or `--run-all`. A plain one runs in the
    work tree and applies the experiment there, over the published params.yaml, dvc.lock, metrics/, plots/ and
    reports/ (issue #34); `dvc exp apply <name>` is the deliberate way to take one (docs/pipeline.md).
    tests/test_pipeline.py runs the quick look, a `--temp` one, in a fresh clone and finds `git status` clean."""
    runs = list(experiment_runs())
    assert len(runs) >= 8, runs  # the patterns find the pages' experiments (README, pipeline, configs, team)
    assert any(where.startswith("docs/configs.md") for where, _ in runs), "a code span in a sentence is found"
    for where, argv in runs:
        assert KEEPS_THE_WORK_TREE & set(argv), f"{where}: applies its results over the published ones"


@pytest.mark.slow
def test_the_worked_example_builds_a_model(conf_with_examples: Path) -> None:
    """docs/configs.md's P13, written into conf/, composes into a model Keras builds."""
    from cnnlab.config.compose import compose, to_job
    from cnnlab.core.models import build_model

    job = to_job(compose(["project=p13", "data=tiny"], config_dir=conf_with_examples))
    assert job.project.id == "p13" and job.augmentation.name == "flip_contrast"
    assert build_model(job.model).count_params() > 0
