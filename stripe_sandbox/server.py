"""Run an ASGI app (the sandbox, or a test receiver) with uvicorn on a background thread."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from .app import create_app
from .config import SandboxConfig
from .store import SandboxState


class BackgroundServer:
    """``with BackgroundServer(app) as srv: srv.url`` - uvicorn on 127.0.0.1 in a thread.

    The socket is bound before the thread starts, so ``port=0`` picks a free port and
    ``.url`` is known immediately.
    """

    def __init__(
        self, app: Any, port: int = 0, host: str = "127.0.0.1", *, date_header: bool = True
    ) -> None:
        self.app = app
        self.host = host
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP; without it every response waits ~40 ms for a delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="on", date_header=date_header
            )
        )
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxServer(BackgroundServer):
    """The Stripe sandbox on a background thread::

        with SandboxServer(SandboxConfig(webhook_url=...)) as sandbox:
            client = stripe.StripeClient("sk_test_sandbox", base_addresses={"api": sandbox.url})
            ...
            sandbox.state.flush()   # wait for webhook deliveries

    Unless ``config.public_url`` is set, checkout/portal/invoice URLs point at this server.
    """

    def __init__(
        self, config: SandboxConfig | None = None, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        config = config or SandboxConfig()
        # Bind first (to learn the port), then build the app with the right public URL.
        super().__init__(None, port, host, date_header=False)  # the sandbox dates its answers
        if not config.public_url:
            config = dataclasses.replace(config, public_url=self.url)
        self.config = config
        self.state = SandboxState(config)
        self.app = create_app(config, self.state)
        self._server.config.app = self.app

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until all queued webhooks are delivered (or finally failed)."""
        return self.state.flush(timeout)

    def stop(self) -> None:
        super().stop()
        self.state.close()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self
