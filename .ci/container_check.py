"""Check a running serving container over loopback: ``python .ci/container_check.py CASE URL MODEL``.

Called by ``.ci/container.sh test`` once per container. ``URL`` is where the container's port is
published (``http://127.0.0.1:PORT``), ``MODEL`` the saved version copied into the image. Each check
prints one line; the first failure stops with exit status 1.

- ``/health`` answers 200 (once the server listens) and ``/ready`` turns 200, each within
  ``--ready-timeout`` seconds, and reports the version that was copied in (its ``metadata.json``);
- one real prediction per case, compared with the same request served on this machine from the
  same saved files (``lm4f.serve.app_from_argv`` through FastAPI's test client): the label must be
  the same and the probabilities within 1e-4 (the image may hold another build of the same torch);
- one bad request gets its 4xx with the error schema (``detail`` and ``code``);
- ``/metrics`` counts the requests just made.

Only the standard library talks to the container; ``lm4f`` (from this repository) computes the expected
answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 30  # one request; the first prediction of a case may load lazily


class CheckFailed(RuntimeError):
    pass


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
         timeout_s: float = TIMEOUT_S):
    """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_json(url: str, payload) -> tuple[int, dict]:
    status, _, body = call(url, "POST", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def check(condition: bool, what: str, detail="") -> None:
    if not condition:
        raise CheckFailed(f"FAIL {what}" + (f": {detail}" if detail else ""))
    print(f"  ok  {what}", flush=True)


def wait_for(url: str, timeout_s: float) -> tuple[dict, float]:
    """Poll ``url`` until it answers 200 or the timeout: (its JSON, seconds waited). Until the server listens,
    a published port may refuse or hold the connection, so each try has a short timeout and is repeated."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            status, _, body = call(url, timeout_s=5)
            if status == 200:
                return json.loads(body), time.monotonic() - started
            last = f"{status} {body[:200]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last = repr(error)
        time.sleep(1)
    raise CheckFailed(f"FAIL GET {url}: not 200 within {timeout_s:.0f} s (last answer: {last})")


def same_prediction(route: str, served: dict, expected: dict) -> None:
    """Same label (or ranking) as this machine's answer, probabilities within 1e-4."""
    if "probabilities" in expected:
        check(served["label"] == expected["label"], f"POST {route}: label {served['label']!r} as served here")
        gap = max(abs(served["probabilities"][name] - p) for name, p in expected["probabilities"].items())
        check(gap < 1e-4, f"POST {route}: probabilities within 1e-4 of this machine's ({gap:.1e})")
    elif "probability" in expected:
        check(served["recommended"] == expected["recommended"] and abs(served["probability"] - expected[
            "probability"]) < 1e-4, f"POST {route}: probability {served['probability']} as served here")
    elif "answers" in expected:  # /ask: the same reviews in the same order, scores within 1e-4
        pairs = list(zip(served["answers"], expected["answers"]))
        check(len(served["answers"]) == len(expected["answers"]) and all(
            a["review"] == b["review"] and abs(a["score"] - b["score"]) < 1e-4 for a, b in pairs),
            f"POST {route}: the same {len(pairs)} reviews as served here, scores within 1e-4")
    else:
        check(served == expected, f"POST {route}: same answer as served here")


# The real request of each case and the bad one (route, body, expected status).
def requests_for(case: str) -> tuple[list[tuple[str, object]], tuple[str, object, int]]:
    if case == "images":
        from lm4f import data

        pixels, labels = data.fashion_mnist("test")
        image = pixels[0].astype(int).tolist()  # a real test image (28 rows of 28 values)
        return [("/predict", {"pixels": image})], ("/predict", {"pixels": image[:27]}, 422)
    if case == "reviews":
        return ([("/classify", {"text": "Lovely soft fabric, but it runs small: order a size up."}),
                 ("/ask", {"question": "Does it run small?", "k": 3})],
                ("/classify", {"text": 5}, 422))
    if case == "movies":
        return [("/recommend", {"history": [50, 172, 181], "k": 5})], ("/recommend", {"history": "x", "k": 5}, 422)
    if case == "generate":
        return [("/generate", {"class": "Sneaker", "n": 2, "seed": 1})], ("/generate", {"class": "Spaceship"}, 422)
    if case == "assistant":
        return [("/ask", {"question": "How long do I have to return an item?"})], ("/ask", {"question": 7}, 422)
    raise SystemExit(f"no checks written for case {case!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("url", help="e.g. http://127.0.0.1:18000")
    parser.add_argument("model", type=Path, help="the saved version copied into the image")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    args = parser.parse_args()
    base = args.url.rstrip("/")
    print(f"{args.case} at {base}", flush=True)
    try:
        health, waited = wait_for(base + "/health", args.ready_timeout)
        check(health["status"] == "ok", f"GET /health -> 200 ok (waited {waited:.0f} s for the server)", health)
        ready, waited = wait_for(base + "/ready", args.ready_timeout)
        check(ready["status"] == "ready", f"GET /ready -> 200 ready (waited {waited:.0f} s more)", ready)
        version = json.loads((args.model / "metadata.json").read_text())
        check(ready["model"]["version"] == version["version"] and ready["model"]["case"] == args.case,
              f"/ready serves {args.case} {version['version']} (the saved version copied in)", ready)

        from fastapi.testclient import TestClient

        from lm4f import serve

        good, (bad_route, bad_body, bad_status) = requests_for(args.case)
        app, _ = serve.app_from_argv([args.case, "--model", str(args.model)])
        with TestClient(app) as local:
            for route, payload in good:
                status, served = post_json(base + route, payload)
                check(status == 200, f"POST {route} -> 200", served)
                same_prediction(route, served, local.post(route, json=payload).json())
        status, error = post_json(base + bad_route, bad_body)
        check(status == bad_status and error.get("detail") and error.get("code"),
              f"POST {bad_route} with a bad body -> {bad_status} {error.get('code')}: "
              f"{str(error.get('detail'))[:90]}...", error)
        status, _, body = call(base + "/metrics")
        text = body.decode()
        counted = [line for line in text.splitlines() if line.startswith("lm4f_http_requests_total{")
                   and f'route="{good[0][0]}"' in line and 'status="200"' in line]
        check(status == 200 and counted and float(counted[0].rsplit(" ", 1)[1]) >= 1,
              f"GET /metrics counts POST {good[0][0]}", counted or text[:300])
    except CheckFailed as failure:
        print(failure, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
