"""Decoding of Stripe's form encoding (``items[0][price]=x``, ``metadata[k]=v``, ``expand[]=a``)
into nested dicts/lists, plus small typed accessors that raise Stripe-shaped errors."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from .errors import StripeError, invalid_param

_TOKEN = re.compile(r"\[([^\[\]]*)\]")
# Under these keys numeric-looking names are user data, never list indexes.
_FREE_FORM_KEYS = {"metadata"}


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    if not rest:
        return [key]
    return [head, *_TOKEN.findall("[" + rest)]


def _listify(node: Any, key: str | None = None) -> Any:
    """Turn dicts whose keys are all indexes into lists (sorted by index)."""
    if isinstance(node, dict):
        converted = {k: _listify(v, k) for k, v in node.items()}
        if (
            converted
            and key not in _FREE_FORM_KEYS
            and all(isinstance(k, int) or k.isdigit() for k in converted)
        ):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    return node


def decode_form(raw: str | bytes) -> dict[str, Any]:
    """``a[b][0][c]=1&e[]=x&e[]=y`` -> ``{"a": {"b": [{"c": "1"}]}, "e": ["x", "y"]}``."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        parts = _split_key(key)
        node: dict[str, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # "[]": append, using the next free index
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return _listify(root)


def flatten(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Canonical flat form of decoded params, used to compare idempotent requests."""
    out: list[tuple[str, str]] = []
    items = enumerate(params) if isinstance(params, list) else params.items()
    for k, v in items:
        key = f"{prefix}[{k}]" if prefix else str(k)
        if isinstance(v, dict | list):
            out.extend(flatten(v, key))  # type: ignore[arg-type]
        else:
            out.append((key, str(v)))
    return sorted(out)


def as_bool(value: Any, param: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0", ""):
        return False
    raise invalid_param(param, f"Invalid boolean: {value}")


def as_int(value: Any, param: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(
            f"Invalid integer: {value}", param=param, code="parameter_invalid_integer"
        ) from None


def as_dict(value: Any, param: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, list):  # metadata[0]=x was decoded as a list only if not free-form
        return {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise invalid_param(param, f"Invalid hash: {param} must be a hash")
    return value


def as_list(value: Any, param: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return list(value.values())
    if not isinstance(value, list):
        return [value]
    return value


def limit_of(params: dict[str, Any]) -> int:
    limit = as_int(params.get("limit"), "limit")
    if limit is None:
        return 10
    if not 1 <= limit <= 100:
        raise StripeError(
            "Invalid limit: must be between 1 and 100", param="limit", code="parameter_invalid"
        )
    return limit


def apply_metadata(current: dict[str, str], update: dict[str, Any]) -> dict[str, str]:
    """Stripe merges metadata; an empty value deletes the key; ``metadata=`` clears everything."""
    result = dict(current)
    for key, value in update.items():
        if value in ("", None):
            result.pop(key, None)
        else:
            result[str(key)] = str(value)
    return result


def created_filter(value: Any, param: str = "created") -> dict[str, int]:
    """``created=123`` or ``created[gte]=123`` (gt, gte, lt, lte) -> {op: ts}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        out = {}
        for op, v in value.items():
            if op not in ("gt", "gte", "lt", "lte"):
                raise invalid_param(f"{param}[{op}]", f"Received unknown parameter: {param}[{op}]")
            out[op] = as_int(v, f"{param}[{op}]") or 0
        return out
    return {"eq": as_int(value, param) or 0}


def matches_created(created: int, flt: dict[str, int]) -> bool:
    checks = {
        "eq": created == flt.get("eq", created),
        "gt": created > flt.get("gt", created - 1),
        "gte": created >= flt.get("gte", created),
        "lt": created < flt.get("lt", created + 1),
        "lte": created <= flt.get("lte", created),
    }
    return all(checks.values())
