"""API test fixtures: the API as production serves it (the fast lane in front of the
FastAPI app from create_api) over an ASGI client, or over real HTTP (uvicorn on loopback)
where threads must hit it concurrently."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

with warnings.catch_warnings():  # starlette nudges towards httpx2; httpx is what we pin
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from billing_app.api import auth_routes
from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from billing_app.db import session_scope
from billing_app.services import api_keys, auth
from billing_app.services.dto import UserDTO
from tests.factories import make_user

ORIGIN = "http://testserver"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id, with minimal cost parameters: these tests are about the API, and
    default-cost hashing (~0.1-1 s each on a busy CI box) would dominate their run time."""
    from argon2 import PasswordHasher

    from billing_app.services import passwords

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(passwords, "_hasher", cheap)
    monkeypatch.setattr(auth, "_DUMMY_HASH", cheap.hash("not-a-real-password-ever"))


@pytest.fixture(autouse=True)
def _clean(engine: Any) -> Iterator[None]:
    """Every API test starts from empty tables and cold in-process caches."""
    api_keys.clear_cache()
    auth_routes._oauth_client.cache_clear()
    yield
    api_keys.clear_cache()


@pytest.fixture
def api(app_settings: Any) -> FastAPI:
    return create_api()


@pytest.fixture
def app(api: FastAPI) -> Any:
    """What production serves in front of Reflex: the fast lane, then FastAPI."""
    return fast_lane(api)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, base_url=ORIGIN) as c:
        yield c


class Actors:
    """Users A and B, an admin, and their credentials."""

    def __init__(self, api: Any) -> None:
        self.api = api
        with session_scope() as s:
            self.a = make_user(s, email="alice@example.com", plan="basic")
            self.b = make_user(s, email="bob@example.com", plan="basic")
            self.admin = make_user(s, email="root@example.com", admin=True)
            self.service_key = api_keys.create_key(s, name="ingest", service_name="ingest")[1]
            self.a_key = api_keys.create_key(s, name="alice key", user_id=self.a.id)[1]
            self.b_key = api_keys.create_key(s, name="bob key", user_id=self.b.id)[1]

    def cookie_client(self, user: UserDTO) -> TestClient:
        """A browser-like client: session cookie plus our own Origin on every request."""
        with session_scope() as s:
            token = auth.new_session(s, user.id)
        c = TestClient(self.api, base_url=ORIGIN, headers={"Origin": ORIGIN})
        c.cookies.set(auth.SESSION_COOKIE, token)
        return c

    def key_client(self, secret: str) -> TestClient:
        return TestClient(self.api, base_url=ORIGIN, headers={"Authorization": f"Bearer {secret}"})

    def anon(self) -> TestClient:
        return TestClient(self.api, base_url=ORIGIN)


@pytest.fixture
def actors(app: Any) -> Actors:
    return Actors(app)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(app: Any) -> Iterator[LiveServer]:
    """The same app served over real HTTP on loopback."""
    server = LiveServer(app)
    yield server
    server.stop()


def http(server: LiveServer, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
