"""Run an ASGI app on a real loopback socket for the duration of a test.

Tests of wire behaviour (SDK compatibility, connection resets, truncated bodies,
server-sent events) need a real HTTP server, not an in-process transport: only a
socket shows what a client really sees. ``run_asgi`` serves the app with uvicorn
in a background thread on a port the OS picks, and stops it afterwards.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the main thread's owner."""

    def install_signal_handlers(self) -> None:  # pragma: no cover - uvicorn < 0.29 hook
        return None


@contextmanager
def run_asgi(app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0, **config: Any) -> Iterator[str]:
    """Serve ``app`` on ``host`` at a free port; yields ``http://host:port``.

    The socket is bound before uvicorn starts (port 0, so the OS chooses), which
    avoids the race of probing for a free port and binding it later. ``config``
    goes to :class:`uvicorn.Config` (e.g. ``http="h11"``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "timeout_graceful_shutdown": 1}
    options.update(config)
    server = _ThreadServer(uvicorn.Config(app, **options))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits via SystemExit on bind errors
            errors.append(exc)

    thread = threading.Thread(target=serve, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if errors or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server failed to start: {errors[0] if errors else 'thread exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("server did not start in time")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
