"""Load test: the served case studies under concurrent clients, as ``python -m lm4f.serve CASE`` runs them.

For each case a model is trained with ``python -m lm4f.train CASE`` at ``LM4F_SIZE=smoke`` into a
temporary folder (seconds; the architecture served is the CI-size one, so the serving cost is the
same, not the quality), then served by the real command: a uvicorn process (one or two workers,
one PyTorch thread each) on 127.0.0.1. An asyncio client keeps ``concurrency`` requests in flight
until ``REQUESTS`` have been answered, and reports throughput, latency percentiles and errors.
The client runs on the same 2 cores as the server, so the figures are a lower bound for a machine
that only serves.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

from lm4f.serving import free_port

REQUESTS = 1000
CONCURRENCY = (1, 8, 32)
CASES = {  # case: (route, body, workers to try)
    "images": ("/predict", {"pixels": [[0] * 28] * 28}, (1, 2)),
    "reviews": ("/classify", {"text": "Lovely dress, fits perfectly and the fabric is soft."}, (1, 2)),
    "movies": ("/recommend", {"history": [50, 172, 181], "k": 10}, (1, 2)),
    "generate": ("/generate", {"class": "Sneaker", "n": 1, "seed": 1}, (1,)),
}
# The serving target: p95 <= 50 ms with 8 clients, at the worker count the README recommends for each route: the
# default one for /predict and /classify; two for /recommend, whose sequence model takes most of a request
# (with one worker it measured 41-60 ms on a quiet 2-core machine, so the target is not met reliably there).
TARGET = {"workers": {"/predict": 1, "/classify": 1, "/recommend": 2}, "concurrency": 8, "p95_ms": 50.0}


async def _load(url: str, route: str, body: dict, concurrency: int, total: int) -> dict:
    latencies, errors = [], 0
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker():
            nonlocal errors
            for _ in remaining:
                started = time.perf_counter()
                response = await client.post(route, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        for _ in range(5):  # warm-up
            await client.post(route, json=body)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    values = np.array(latencies)
    return {"throughput": total / wall, "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)), "errors": errors}


def _serve(case: str, models: str, workers: int):
    port = free_port()
    env = {**os.environ, "LM4F_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "LM4F_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "lm4f.serve", case, "--model", f"{models}/{case}",
                                "--port", str(port), "--workers", str(workers)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"python -m lm4f.serve {case} exited with {process.returncode}")
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"python -m lm4f.serve {case} was not ready after 120 s")


def run():
    figures = []
    with tempfile.TemporaryDirectory() as models:
        env = {**os.environ, "LM4F_SIZE": "smoke", "OMP_NUM_THREADS": "1", "LM4F_DEVICE": "cpu"}
        for case, (route, body, worker_counts) in CASES.items():
            subprocess.run([sys.executable, "-m", "lm4f.train", case, "--models", models], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            for workers in worker_counts:
                process, url = _serve(case, models, workers)
                try:
                    for concurrency in CONCURRENCY:
                        result = asyncio.run(_load(url, route, body, concurrency, REQUESTS))
                        context = {"route": route, "workers": workers, "concurrency": concurrency,
                                   "requests": REQUESTS, "errors": result["errors"]}
                        name = f"{case} {route}, {workers} worker(s), {concurrency} in flight"
                        units = {"throughput": "req/s", "p50": "ms", "p95": "ms", "p99": "ms", "errors": ""}
                        figures += [{"metric": f"{name}: {key}", "value": result[key], "unit": unit, **context}
                                    for key, unit in units.items()]
                        if concurrency == TARGET["concurrency"] and workers == TARGET["workers"].get(route):
                            met = result["p95"] <= TARGET["p95_ms"] and result["errors"] == 0
                            figures.append({"metric": f"{name}: p95 <= {TARGET['p95_ms']:.0f} ms and no errors",
                                            "value": "meets" if met else "misses", "unit": "", **context})
                finally:
                    process.terminate()
                    process.wait(timeout=30)
    return figures
