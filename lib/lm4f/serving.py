"""Serve a FastAPI app on localhost from a notebook or a test, and measure its latency.

    server = lm4f.serving.start(app)          # a real uvicorn HTTP server on 127.0.0.1
    response = httpx.post(server.url + "/classify", json={...})
    stats = lm4f.serving.measure_latency(lambda: httpx.post(...), requests=200)
    server.stop()

The server runs in a background thread of the current process, so a notebook can keep working
while it serves. Only loopback addresses are used.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import numpy as np


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    server: object
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def start(app, port: int | None = None, timeout: float = 30.0) -> RunningServer:
    """Start ``app`` under uvicorn on 127.0.0.1 in a daemon thread; return when it accepts requests."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"The server on port {port} stopped while starting; see the log above.")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"The server on port {port} did not start within {timeout} s.")
        time.sleep(0.02)
    return RunningServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


def measure_latency(send, requests: int = 100, warmup: int = 5) -> dict:
    """Call ``send()`` (one complete HTTP request) ``requests`` times; return latency percentiles in ms."""
    for _ in range(warmup):
        send()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        send()
        samples.append((time.perf_counter() - started) * 1000.0)
    samples_ms = np.array(samples)
    return {
        "requests": requests,
        "p50_ms": float(np.percentile(samples_ms, 50)),
        "p95_ms": float(np.percentile(samples_ms, 95)),
        "mean_ms": float(samples_ms.mean()),
    }
