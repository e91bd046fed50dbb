"""Composing the config (Hydra's compose API) and turning it into the typed job, with every composition problem
said in one line: an unknown group option, an unknown key, a value of the wrong type.

Two gaps of OmegaConf are closed here: it converts a value to its field's type where it can (`"3"` to 3, 1 to
true), so an override's own type, as Hydra's parser reads it, is checked against the field's; and `+key=value`
adds a key to a typed node without complaint, so a composed node's keys are checked against its dataclass."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf, UnionNode
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import BooleanNode, EnumNode, FloatNode, IntegerNode

from cnnlab.config import schema
from cnnlab.config.errors import ConfigError
from cnnlab.config.machine import bf16_is_fast_here
from cnnlab.config.schema import JobConfig

CONF = Path(__file__).resolve().parents[3] / "conf"


def _safe_name(value: Any) -> str:
    """A value made one harmless folder name (`../../x` -> `.._.._x` is still one name: every '/' and a leading
    '.' become '_'), for Hydra's run folders, which are made before any check of the project id can run."""
    return re.sub(r"^\.|[^A-Za-z0-9_.-]", "_", str(value)) or "_"


if not OmegaConf.has_resolver("cnnlab_safe"):
    OmegaConf.register_new_resolver("cnnlab_safe", _safe_name)


class CompositionError(ConfigError, ConfigCompositionException):
    """Hydra could not compose the config; the message is one line naming the key or option."""


def compose(overrides: Sequence[str] = (), config_dir: Path = CONF) -> DictConfig:
    """The primary config with `overrides`, as `python -m cnnlab.train` would see it (without Hydra's own keys),
    checked (`check_composed`)."""
    schema.register()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"), composition_errors():
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    check_composed(cfg, overrides)
    return cfg


def to_job(cfg: DictConfig) -> JobConfig:
    """The typed job (dataclasses, enums) from a composed config; interpolations are resolved here, and so is
    `training.mixed_precision: auto` (the machine's choice, `machine.bf16_is_fast_here`), so that what decides the
    run's numbers is in its settings, key and params as true or false."""
    with composition_errors():
        job = OmegaConf.to_object(cfg)
    if job.training.mixed_precision == "auto":
        job.training.mixed_precision = bf16_is_fast_here()
    return job


def check_composed(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse what composition let through: keys added to a typed node, and override values that OmegaConf
    would convert to the field's type (a quoted "3" for an integer, 1 for a boolean)."""
    for key, node in _typed_nodes(cfg, ""):
        fields = {f.name for f in dataclasses.fields(node._metadata.object_type)}
        unknown = sorted(set(node.keys()) - fields)
        if unknown:
            name = f"{key}.{unknown[0]}" if key else unknown[0]
            raise CompositionError(f"{name}={node[unknown[0]]!r} is not allowed: not a key of {key or 'the config'} "
                                   f"(its keys: {', '.join(sorted(fields))})")
    with composition_errors():
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    for override in parsed:
        if override.is_sweep_override() or override.is_delete():
            continue
        key, value = override.key_or_group, override.value()
        node = None if key.startswith("hydra") else _node_at(cfg, key)
        problem = _strict_type_problem(node, value)
        if problem:
            raise CompositionError(f"{key}={value!r} is not allowed: {problem}")


def _node_at(cfg: DictConfig, key: str) -> Any:
    """The node at a dotted key (list indices included), or None when there is none."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        else:
            return None
    return node


def _typed_nodes(node: Any, key: str) -> Iterator[tuple[str, DictConfig]]:
    """Every DictConfig under `node` that a dataclass types, with its dotted key."""
    if isinstance(node, DictConfig):
        if dataclasses.is_dataclass(node._metadata.object_type):
            yield key, node
        for name in node.keys():
            child = node._get_node(name)
            yield from _typed_nodes(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig) and not node._is_none():  # an optional list left unset holds nothing
        for i, child in enumerate(node._iter_ex(resolve=False)):
            yield from _typed_nodes(child, f"{key}.{i}")


def _strict_type_problem(node: Any, value: Any) -> str | None:
    """Why an override's value, as parsed, does not have its field's type; None when it has."""
    if value is None:
        return None
    if isinstance(node, BooleanNode) and type(value) is not bool:
        return "true or false"
    if isinstance(node, IntegerNode) and type(value) is not int:
        return "an integer" + (" (quoted, it is a string)" if isinstance(value, str) else "")
    if isinstance(node, FloatNode) and type(value) not in (int, float):
        return "a number" + (" (quoted, it is a string)" if isinstance(value, str) else "")
    return None


def _field_of(key: str) -> dataclasses.Field | None:
    """The schema field a dotted key falls under (the list or mapping field for a key inside one)."""
    kind: Any = JobConfig
    found = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(kind):
            break
        found = next((f for f in dataclasses.fields(kind) if f.name == part), None)
        if found is None:
            return None
        hints = typing.get_type_hints(kind)
        kind = hints.get(part)
        kind = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)  # Optional[...]
    return found


def describe(key: str, node: Any) -> str:
    """What a key allows, in words: its field's `allowed` metadata, its enum's docstring, or its type."""
    found = _field_of(key)
    if found is not None and "allowed" in found.metadata:
        return found.metadata["allowed"]
    if isinstance(node, EnumNode) and isinstance(node._metadata.ref_type, type):
        enum: type[Enum] = node._metadata.ref_type
        return (enum.__doc__ or ", ".join(m.name for m in enum)).strip()
    for kind, words in ((BooleanNode, "true or false"), (IntegerNode, "an integer"), (FloatNode, "a number"),
                        (UnionNode, "a value of another type")):
        if isinstance(node, kind):
            return words
    return "a value of the key's type"


class composition_errors:
    """Hydra's and OmegaConf's composition errors as one-line CompositionErrors naming the key or option."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        if err is None or isinstance(err, CompositionError):
            return False
        message = _one_line(err)
        if message is None:
            return False
        raise CompositionError(message) from err


def _one_line(err: BaseException) -> str | None:
    if isinstance(err, MissingConfigException):
        parts = str(err.missing_cfg_file or "").split("/")
        cut = next((i for i, part in enumerate(parts) if part in (".", "..")), len(parts) - 1)
        group, option = "/".join(parts[:cut]), "/".join(parts[cut:])
        options = ", ".join(sorted(err.options or []))
        if group and options:
            return f"{group}={option!r} is not allowed: one of {options} (conf/{group}/)"
        return str(err).strip().splitlines()[0]
    if isinstance(err, OverrideParseException):
        return f"overrides: {str(err).strip().splitlines()[0]}"
    cause = err.__cause__ if isinstance(err, ConfigCompositionException) else err
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key, value = re.sub(r"\[(\d+)\]", r".\1", cause.full_key), getattr(cause, "value", None)
        if isinstance(cause, ConfigKeyError) or "not in" in str(cause) or "Key '" in str(cause):
            parent, _, name = key.rpartition(".")
            return f"{key} is not allowed: not a key of {parent or 'the config'}"
        return f"{key}={value!r} is not allowed: {describe(key, getattr(cause, 'child_node', None))}"
    if isinstance(err, ConfigCompositionException):
        return str(err).strip().splitlines()[0]
    return None
