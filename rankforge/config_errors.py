"""One line per configuration problem, from pydantic's validation errors.

Every config surface (training configs, data configs, ``--data KEY=VALUE`` flags) reports the
same way: the dotted key, what is wrong with it (the allowed values, for a choice), and the
offending value when it is short — never the whole parsed config, never pydantic's help URLs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

#: Longest offending value quoted in a message; longer ones are named by type only.
MAX_VALUE_CHARS = 60


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str] | None:
    """The keys the (nested) section at ``path`` accepts, when it is a pydantic model."""
    for key in path:
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return sorted(model.model_fields)


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else f"a {type(value).__name__} of {len(text)} characters"


def describe(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """``"key: problem (got value); other.key: ..."`` for every error of ``exc``."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = prefix + ".".join(str(p) for p in loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            problems.append(f"unknown key {where!r}" + (f"; valid keys: {valid}" if valid else ""))
        elif not loc:  # a whole-config check: its message names the keys it is about
            problems.append(message)
        else:
            problems.append(f"{where}: {message} (got {_value(err.get('input'))})")
    return "; ".join(problems)
