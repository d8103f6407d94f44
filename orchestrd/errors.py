"""The error hierarchy, and turning pydantic's validation errors into lines a person can act on.

Exit codes live in cli.py only.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a caller holding a model needs it: `orchestrd --help` starts without it
    import pydantic


class OrchestrdError(Exception):
    """Base of every error orchestrd reports to a person (no traceback)."""


class ConfigError(OrchestrdError):
    """The daemon configuration is unusable; the message names the file, the key and the fix."""


class PlanError(OrchestrdError):
    """A plan file is invalid; the message names the file, the key and the fix."""


class StateError(OrchestrdError):
    """A state file is unreadable or inconsistent."""


def _loc_to_str(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _model_at(model: type[pydantic.BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The model class that owns the last key of `loc`, for listing the keys it allows."""
    import pydantic

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list index: the element type was unwrapped already
        if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        # unwrap Optional / list / dict to the model inside
        while True:
            origin = typing.get_origin(current)
            if origin in (typing.Union, types.UnionType):
                members = [a for a in typing.get_args(current) if a is not type(None)]
                current = members[0] if members else None
            elif origin in (list, tuple, dict):
                args = typing.get_args(current)
                current = args[-1] if args else None
                break
            elif origin is typing.Annotated:
                current = typing.get_args(current)[0]
            else:
                break
    return current


def _message(model: type[pydantic.BaseModel], err: Any) -> str:
    import pydantic

    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        owner = _model_at(model, loc)
        if isinstance(owner, type) and issubclass(owner, pydantic.BaseModel):
            allowed = ", ".join(owner.model_fields)
            return f"unknown key; check its spelling (allowed here: {allowed})"
        return "unknown key; check its spelling"
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be {expected}"
    msg: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg.replace("Input should be", "must be")
    return msg


def describe_validation_error(
    source: Path | str, model: type[pydantic.BaseModel], exc: pydantic.ValidationError
) -> str:
    """One line per problem: `FILE: key.path: what is wrong and what to write instead`."""
    lines = []
    for err in exc.errors():
        lines.append(f"{source}: {_loc_to_str(tuple(err['loc']))}: {_message(model, err)}")
    return "\n".join(lines)


def describe_failure(exc: BaseException) -> str:
    """Why a plan's runner could not go on, as `Type: message` per error inside."""
    return "; ".join(f"{type(e).__name__}: {e}" for e in leaf_errors(exc))


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, or `exc` itself: a task group's
    "unhandled errors in a TaskGroup" says nothing a person can act on."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaf_errors(sub)]
    return [exc]
