"""The held-out data of ``rankforge evaluate``/``promote``: a data config file plus ``--data`` flags.

Flags are ``key=value`` overrides of :class:`DataConfig` fields (dotted for nested ones, e.g.
``synthetic.n_users=60``) so any field can be set without a file, and a file can be reused with one
field changed; the result is validated as a whole, with the same rules as a training config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rankforge.config_errors import describe
from rankforge.errors import ConfigError
from rankforge.features.pipeline import DataConfig


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as a TOML literal when it is one
    (numbers, booleans, quoted strings), else taken as a bare string (paths, names)."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--data expects KEY=VALUE (e.g. source=file, synthetic.n_users=60), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def data_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DataConfig:
    """The file's ``[data]`` section (or the defaults) with ``overrides`` applied, validated."""
    base = DataConfig.from_file(path) if path is not None else DataConfig()
    if not overrides:
        return base
    merged = base.model_dump()
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--data {text!r}: {key!r} is not a section of the data config")
            node = node[key]
        node[keys[-1]] = value
    try:
        return DataConfig.model_validate(merged)
    except ValidationError as exc:
        origin = f"{path} with " if path is not None else ""
        raise ConfigError(
            f"data config ({origin}--data {' '.join(overrides)}): {describe(exc, DataConfig)}"
        ) from exc
