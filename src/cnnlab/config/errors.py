"""The one error every check raises: a config value that is not allowed, named with what is allowed."""

from __future__ import annotations

from typing import Any, NoReturn


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")
