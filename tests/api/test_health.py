"""GET /api/health is a readiness check: 200 only when the database answers and holds
this code's schema; otherwise 503 with the one line that says what to do."""

from __future__ import annotations

import sqlalchemy as sa

from billing_app.db import schema_head, schema_problem


def _set_revision(engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_health_names_a_database_behind_the_code(client, engine):
    head = schema_head()
    assert schema_problem(engine) is None
    assert client.get("/api/health").status_code == 200  # asked again on every call
    _set_revision(engine, "0007")
    try:
        r = client.get("/api/health")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "service_unavailable"
        assert err["message"] == (
            f"The database schema is at 0007; this code needs {head}: run `billing-app db upgrade`."
        )
    finally:
        _set_revision(engine, head)
    assert client.get("/api/health").json() == {"status": "ok"}


def test_an_empty_database_has_no_schema_yet(tmp_path):
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert schema_problem(empty) == (
            f"The database has no schema yet: run `billing-app db upgrade` (to {schema_head()})."
        )
    finally:
        empty.dispose()


def test_health_says_503_when_the_database_goes_away_after_a_200(client, monkeypatch):
    from tests.conftest import _clear_caches

    assert client.get("/api/health").status_code == 200
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    _clear_caches()
    r = client.get("/api/health")
    assert r.status_code == 503, r.text
