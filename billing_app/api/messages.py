"""Pydantic's validation errors in words a person acts on, naming the field.

Pydantic says "Input should be a valid integer" or "Field required" without the field or
what came instead; a 422's message (and each `fields` entry's) says both. The entry's
`type` keeps pydantic's error type for programs.
"""

from __future__ import annotations

import json
from typing import Any

_EXAMPLE_TIME = "2026-12-07T13:00:00Z"
_SHOWN = 40  # characters of a refused string quoted back


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """The field a location names, as the caller wrote it: `quantity`, `events.3.metric`,
    `page` for a query parameter; `body` for the body as a whole."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _shown(value: Any) -> str:
    """A refused value as JSON, cut short: `"abc"`, `1.5`, `true`, `null`, an object."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escaped, or the answer cannot be sent
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= _SHOWN:
        return text
    return text[: _SHOWN - 1] + ('…"' if isinstance(value, str) else "…")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def friendly(error: dict[str, Any], name: str) -> str:
    """One sentence for one pydantic error about the field `name`."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    value = error.get("input")
    # A query parameter is text as sent: quoted, `page=0` would read as the string "0".
    query = tuple(error.get("loc") or ())[:1] == ("query",) and isinstance(value, str)
    got = f" (got {value[:_SHOWN] if query else _shown(value)})"
    the = "The body" if name == "body" else name
    if kind == "missing":
        return f"{the} is required."
    if kind == "extra_forbidden":
        return f"There is no field {name} here; check its spelling against /api/docs."
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{the} must be a whole number{got}."
    if kind == "string_type":
        return f"{the} must be a string{got}."
    if kind == "string_unicode":
        return f"{the} must be Unicode text (it holds a lone surrogate such as \\ud800)."
    if kind in ("bool_type", "bool_parsing"):
        return f"{the} must be true or false{got}."
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{the} must be a JSON object{got}."
    if kind in ("list_type", "tuple_type"):
        return f"{the} must be a JSON array{got}."
    if kind == "greater_than":
        return f"{the} must be greater than {_number(ctx.get('gt'))}{got}."
    if kind == "greater_than_equal":
        return f"{the} must be at least {_number(ctx.get('ge'))}{got}."
    if kind == "less_than":
        return f"{the} must be less than {_number(ctx.get('lt'))}{got}."
    if kind == "less_than_equal":
        return f"{the} must be at most {_number(ctx.get('le'))}{got}."
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return f"{the} must not be empty."
        return f"{the} must be at least {ctx.get('min_length')} characters."
    if kind == "string_too_long":
        length = f" (got {len(value):,})" if isinstance(value, str) else ""
        return f"{the} must be at most {_number(ctx.get('max_length'))} characters{length}."
    if kind == "too_short":
        least = ctx.get("min_length")
        items = "item" if least == 1 else "items"
        return f"{the} must hold at least {least} {items} (got {ctx.get('actual_length')})."
    if kind == "too_long":
        many = _number(ctx.get("max_length"))
        return f"{the} must hold at most {many} items (got {_number(ctx.get('actual_length'))})."
    if kind.startswith(("datetime_", "date_")):
        why = f": {ctx['error']}" if ctx.get("error") else ""
        return f"{the} must be an ISO 8601 time such as {_EXAMPLE_TIME}{got}{why}."
    if kind in ("literal_error", "enum"):
        return f"{the} must be one of {ctx.get('expected')}{got}."
    if kind == "value_error":  # our own validators' words, without pydantic's prefix
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        return msg if msg.startswith(name) else f"{the}: {msg}"
    return f"{the}: {error.get('msg', 'invalid')}"
