"""The hot path's binary arrays: byte for byte what psycopg's own dumpers send for the
same typed lists, and read back unchanged by PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.numeric import Int4, Int8

from billing_app.pg_arrays import int4_array, int8_array, text_array

INT4S = [[], [7], [1, 2, 3, 1_000], [-(2**31), 0, 2**31 - 1]]
INT8S = [[], [7], [1, 2**40, 3], [-(2**63), 0, 2**63 - 1]]
TEXTS = [
    [],
    ["tokens"],
    ["tokens"] * 3,
    ["a", "", "é€😀", 'quote " and \\ backslash, {braces}'],
    [None],
    ["x", None, "y", None],
]


def _psycopg(values: list) -> bytes:
    """What psycopg itself dumps for the list, in binary. With no element to take a type
    from (empty, or all None), psycopg sends text ("{}"), so those are checked by their
    bytes and by PostgreSQL reading them back, below."""
    return bytes(Transformer().get_dumper(values, PyFormat.BINARY).dump(values))


def _typed(values: list) -> bool:
    return any(v is not None for v in values)


@pytest.mark.parametrize("values", [v for v in INT4S if v])
def test_int4_array_is_psycopgs_int4_array(values: list[int]) -> None:
    assert int4_array(values) == _psycopg([Int4(v) for v in values])


@pytest.mark.parametrize("values", [v for v in INT8S if v])
def test_int8_array_is_psycopgs_int8_array(values: list[int]) -> None:
    assert int8_array(values) == _psycopg([Int8(v) for v in values])


@pytest.mark.parametrize("values", [v for v in TEXTS if _typed(v)])
def test_text_array_is_psycopgs_text_array(values: list[str | None]) -> None:
    assert text_array(values) == _psycopg(values)


def test_empty_and_all_null_arrays_keep_their_element_type() -> None:
    # ndim 0, no nulls, element type; then ndim 1 with a null, text, 1 element of -1 bytes
    assert int4_array([]) == bytes.fromhex("000000000000000000000017")
    assert int8_array([]) == bytes.fromhex("000000000000000000000014")
    assert text_array([]) == bytes.fromhex("000000000000000000000019")
    assert text_array([None]) == bytes.fromhex("0000000100000001000000190000000100000001ffffffff")


def test_out_of_range_integers_are_refused_not_wrapped() -> None:
    with pytest.raises(OverflowError):
        int4_array([2**31])
    with pytest.raises(OverflowError):
        int8_array([-(2**63) - 1])


def test_postgresql_reads_them_back_with_their_types(engine: sa.Engine, is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("a PostgreSQL wire format (PostgreSQL leg)")
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        for make, cast, cases in (
            (int4_array, "integer[]", INT4S),
            (int8_array, "bigint[]", INT8S),
            (text_array, "text[]", TEXTS),
        ):
            for values in cases:
                back, kind = conn.execute(
                    f"SELECT %(a)b::{cast}, pg_typeof(%(a)b)::text", {"a": make(values)}
                ).fetchone()  # type: ignore[misc]
                assert back == values
                assert kind == cast
