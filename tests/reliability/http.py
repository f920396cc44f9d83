"""A tiny keep-alive HTTP client for the fault tests (the load generator's connection)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.loadgen import Spec, _Conn, build_request


class Client:
    """One connection; reconnects after any error. `post` returns (status, json) or raises."""

    def __init__(self, port: int, headers: dict[str, str], timeout: float = 15.0) -> None:
        self.spec = Spec(port=port, path="/", headers=headers)
        self.conn = _Conn(self.spec)
        self.timeout = timeout

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.spec.path = path
        raw = build_request(self.spec, json.dumps(body).encode())
        try:
            status, data = await asyncio.wait_for(self.conn.request(raw), self.timeout)
        except BaseException:
            self.conn.close()
            raise
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


RETRYABLE = (OSError, asyncio.IncompleteReadError, TimeoutError)
