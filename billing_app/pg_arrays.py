"""PostgreSQL binary arrays for the hot path's `unnest()` parameters, built in bulk.

psycopg dumps a list element by element in Python (a struct.pack and a sub-dumper
call each), and first scans an int list for its largest value to choose int2, int4 or
int8. For a 1,000-event batch, whose statements carry thirteen arrays, that was
2.5-3.2 ms of the server's CPU (bench/README.md, finding 45). These build the same
wire format with C-level operations per array, not Python ones per element: integers
are packed by `array` and interleaved with their length words by strided slice
assignment; text is encoded and framed through `map`. Timestamps are left to psycopg,
whose C dumper was faster than anything built from Python's datetime arithmetic.

Use them as binary parameters (`%(name)b::integer[]`); the dumpers registered below
pass the bytes through with the array's type, so the statement's parameter types never
change from one call to the next (psycopg's chosen int2[] or int8[] did).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_HEAD = struct.Struct(">iiiii")  # ndim, has nulls, element type, length, lower bound
_EMPTY = struct.Struct(">iii")  # no dimensions
_LEN = struct.Struct(">i").pack
_NULL = _LEN(-1)

INT4_OID, INT8_OID, TEXT_OID = 23, 20, 25


class _Encoded(bytes):
    """A binary array, ready to send; subclasses name its PostgreSQL type."""

    array_oid: int


class Int4Array(_Encoded):
    array_oid = 1007


class Int8Array(_Encoded):
    array_oid = 1016


class TextArray(_Encoded):
    array_oid = 1009


def _fixed(element_oid: int, values: array) -> bytes:
    """One-dimensional array of fixed-width values (`values`: native-order array)."""
    n, width = len(values), values.itemsize
    if not n:
        return _EMPTY.pack(0, 0, element_oid)
    if sys.byteorder == "little":
        values.byteswap()
    raw = values.tobytes()
    step = 4 + width
    body = bytearray(step * n)
    body[3::step] = bytes([width]) * n  # each element's length word: 0 0 0 width
    for b in range(width):
        body[4 + b :: step] = raw[b::width]
    return _HEAD.pack(1, 0, element_oid, n, 1) + body


def int4_array(values: Sequence[int]) -> Int4Array:
    """integer[]; raises OverflowError outside int4's range."""
    return Int4Array(_fixed(INT4_OID, array("i", values)))


def int8_array(values: Sequence[int]) -> Int8Array:
    """bigint[]; raises OverflowError outside int8's range."""
    return Int8Array(_fixed(INT8_OID, array("q", values)))


def text_array(values: Sequence[str | None]) -> TextArray:
    """text[]; None elements are NULL."""
    n = len(values)
    if not n:
        return TextArray(_EMPTY.pack(0, 0, TEXT_OID))
    nulls = None in values
    if nulls:
        data = [b"" if v is None else v.encode() for v in values]
        lens: Any = [
            _NULL if v is None else _LEN(len(d)) for v, d in zip(values, data, strict=True)
        ]
    else:
        data = list(map(str.encode, values))  # type: ignore[arg-type]
        lens = map(_LEN, map(len, data))
    parts = [b""] * (2 * n + 1)  # head, then each element's length word and bytes
    parts[0] = _HEAD.pack(1, int(nulls), TEXT_OID, n, 1)
    parts[1::2] = lens
    parts[2::2] = data
    return TextArray(b"".join(parts))


def _dumper(cls: type[_Encoded]) -> type[Dumper]:
    class _PassThrough(Dumper):
        format = Format.BINARY
        oid = cls.array_oid

        def dump(self, obj: bytes) -> bytes:
            return obj

    _PassThrough.__name__ = f"{cls.__name__}Dumper"
    return _PassThrough


# Global adapters: every psycopg connection opened afterwards starts from these
# (billing_app.db imports this module before it creates an engine).
for _cls in (Int4Array, Int8Array, TextArray):
    psycopg.adapters.register_dumper(_cls, _dumper(_cls))
