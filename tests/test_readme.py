"""README.md stays true to the repository: its list of config groups is conf/'s, every config it names exists,
and it points at nothing outside the repository (a user's clone has nothing beside it)."""

from __future__ import annotations

import re

from tests.conftest import CONF, ROOT

README = (ROOT / "README.md").read_text()
GROUP_LINE = re.compile(r"^- `([\w/]+)/` \(([^)]*)\)", re.MULTILINE)


def _options(listed: str) -> set[str]:
    """`a`, `b`, `p00`…`p12` -> {a, b, p00, ..., p12}."""
    options: set[str] = set()
    for first, last in re.findall(r"`p(\d+)`…`p(\d+)`", listed):
        options |= {f"p{i:02d}" for i in range(int(first), int(last) + 1)}
    options |= set(re.findall(r"`([\w.-]+)`", re.sub(r"`p\d+`…`p\d+`", "", listed)))
    return options


def test_the_listed_config_groups_and_options_are_exactly_conf() -> None:
    listed = {group: _options(options) for group, options in GROUP_LINE.findall(README)}
    listed = {group: options for group, options in listed.items() if options}  # local/: git-ignored, no options
    on_disk: dict[str, set[str]] = {}
    for path in CONF.rglob("*.yaml"):
        group = path.parent.relative_to(CONF).as_posix()
        if group != ".":
            on_disk.setdefault(group, set()).add(path.stem)
    assert listed == on_disk


def _exists(group: str, option: str) -> bool:
    """A file of conf/, or a config a Hydra plugin registers (hydra/launcher=submitit_local)."""
    if (CONF / group / f"{option}.yaml").is_file():
        return True
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which register their configs
    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {})
    return f"{option}.yaml" in node


# README's examples of a refused command name an option that must not exist.
BAD_EXAMPLES = {("augmentation", "nosuch")}


def test_every_config_the_readme_names_exists() -> None:
    named = re.findall(r"(?<![\w.])(data|model|augmentation|training|tracking|project|hydra/launcher)=([\w,]+)",
                       README)
    assert len(named) > 10, "the pattern must find README's overrides"
    for group, options in named:
        for option in options.split(","):
            if option == "glob":
                continue
            if (group, option) in BAD_EXAMPLES:
                assert not _exists(group, option), f"{group}={option} is README's example of an unknown option"
            else:
                assert _exists(group, option), f"{group}={option}"
    files = [f for f in re.findall(r"`(conf/[\w/.*-]+)`", README) if not f.startswith("conf/local/default")]
    assert files
    for name in files:
        assert list(ROOT.glob(name.rstrip("/"))), name


def test_the_readme_points_at_nothing_outside_the_repository() -> None:
    outside = re.findall(r".{0,20}\.\./\w{2,}.{0,20}", README)  # not the unsafe project id `../x` it lists
    assert not outside, outside


def test_the_layout_section_names_every_module_and_package_there_is() -> None:
    """README's Layout lists src/cnnlab's packages and modules, indented as nested: exactly the tree."""
    section = README.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed, stack = set(), []
    for line in section.splitlines():
        match = re.match(r"^    ( *)([\w./]+)\s", line + " ")
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
    named = {name.replace("src/cnnlab/", "src/cnnlab/", 1) for name in listed if name.startswith("src/cnnlab/")
             and name != "src/cnnlab/"}
    assert named == on_disk
