"""Running the app with uvicorn: in the foreground (`speech-llama serve`) or on a background thread
(tests, `bench/serve_load.py`). The socket is bound first, so port 0 means a free port and the URL
printed or returned is the real one."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

START_TIMEOUT_S = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app, log_level: str, access_log: bool) -> uvicorn.Server:
    # timeout_graceful_shutdown: at Ctrl-C, open streams get that long to end before they are cut.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5,
                                         lifespan="on"))


def serve_forever(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on `sock` until interrupted (Ctrl-C / SIGTERM)."""
    _server(app, log_level, access_log=True).run(sockets=[sock])


@contextlib.contextmanager
def serving_in_background(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` on a background thread for the duration of the block; yields the base URL."""
    sock = bind(host, port)
    server = _server(app, log_level, access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting (its log says why)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


__all__ = ["base_url", "bind", "serve_forever", "serving_in_background"]
