"""Serve a case study's saved model as an HTTP service: ``python -m lm4f.serve CASE [options]``.

    python -m lm4f.train images && python -m lm4f.serve images --port 8000       # the newest saved version
    python -m lm4f.serve reviews --model models/reviews/v2 --host 0.0.0.0 --port 8000 --workers 2
    python -m lm4f.serve assistant --backend openai --base-url http://127.0.0.1:9000/v1 --llm NAME

Cases: ``reviews`` (6.2 review triage), ``images`` (6.3), ``movies`` (6.4), ``assistant`` (6.2
customer service). ``--model`` is a version folder written by ``python -m lm4f.train CASE`` or its
case folder (then the newest version is served); every file is checked against ``metadata.json``
first, and a missing, truncated or foreign file stops the command with a message naming the file
and the command that rebuilds it. For the assistant, an index folder written by ``python -m
lm4f.assistant build-index`` (such as ``models/assistant/index``) is accepted too.

Every option has an environment variable, so a container is configured without flags:

    CASE                  LM4F_CASE                (when no case is given on the command line)
    --model PATH          LM4F_MODEL               default models/CASE (LM4F_MODELS/CASE)
    --host / --port       LM4F_HOST / LM4F_PORT    default 127.0.0.1 (this machine only) / 8000
    --workers N           LM4F_WORKERS             worker processes, each with its own copy of the model (default 1)
    --log-level           LM4F_LOG_LEVEL           default info: one JSON line per request on stdout
    --max-body-bytes      LM4F_MAX_BODY_BYTES      request-body limit (default: the case's own)
    --torch-threads       LM4F_TORCH_THREADS       PyTorch threads per worker (default 1)

Reviews only:

    --scores    LM4F_SCORES              what /classify returns besides the decision: full (probability to
                                         4 decimals, default) | rounded (1 decimal) | label (no probability)

Assistant only:

    --backend   LM4F_ASSISTANT_BACKEND   extractive (default, offline) | local | openai
    --llm       LM4F_ASSISTANT_LLM       local: model folder or hub id; openai: the endpoint's model name
    --base-url  LM4F_ASSISTANT_BASE_URL  openai: the endpoint, e.g. https://api.openai.com/v1
    --served-model-name  LM4F_ASSISTANT_SERVED_MODEL  the model id clients send (default lm4f-assistant)

Each case registers a ``Case`` in ``CASES``: a description, a function that builds its FastAPI app
from the parsed options, and (optionally) a function that adds its own options. Adding a case is
one entry. The server is uvicorn; every app has ``/health``, ``/ready``, ``/metrics`` and ``/docs``
(``lm4f.apps.service``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

__all__ = ["Case", "CASES", "UsageError", "app_from_argv", "app_from_environment", "build_parser", "main"]

ARGV_VARIABLE = "LM4F_SERVE_ARGV"  # how worker processes receive the command line


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Case:
    """One servable case study: a one-line description, its app builder and (optionally) its own options."""

    description: str
    build_app: Callable[[argparse.Namespace], object]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _whole_number(name: str, variable: str, low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            upper = f" to {high}" if high is not None else " or more"
            raise argparse.ArgumentTypeError(f"{name} must be a whole number from {low}{upper}, got {text!r} "
                                             f"(from {name} or {variable})")
        return value

    return parse


def _limits(args: argparse.Namespace) -> dict:
    return {"max_body_bytes": args.max_body_bytes} if args.max_body_bytes else {}


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------
def _reviews_app(args: argparse.Namespace):
    from lm4f.apps.nlp import create_app
    from lm4f.nlp import load_triage
    from lm4f.saved_models import open_model

    saved = open_model(args.model, "reviews")
    classifier, retriever = load_triage(saved)
    return create_app(classifier, retriever, about=saved.about(), scores=args.scores, **_limits(args))


def _reviews_arguments(parser: argparse.ArgumentParser) -> None:
    from lm4f.apps.nlp import SCORES

    def scores(text: str) -> str:  # a type, not choices=: argparse does not check choices on a default from LM4F_SCORES
        if text not in SCORES:
            raise argparse.ArgumentTypeError(f"--scores must be one of {', '.join(SCORES)}, got {text!r} "
                                             "(from --scores or LM4F_SCORES)")
        return text

    parser.add_argument("--scores", type=scores, default=_env("LM4F_SCORES", "full"), metavar="{full,rounded,label}",
                        help="what /classify returns besides the decision: full (the probability to 4 decimals), "
                             "rounded (1 decimal) or label (none); fewer digits leak less about who was in the "
                             "training data (env LM4F_SCORES; default full)")


def _images_app(args: argparse.Namespace):
    from lm4f.apps.vision import create_app
    from lm4f.saved_models import open_model
    from lm4f.vision import load_classifier

    saved = open_model(args.model, "images")
    model, classes = load_classifier(saved)
    limits = _limits(args)  # --max-body-bytes, when given, caps the photo uploads of /predict/image too
    return create_app(model, classes, about=saved.about(), **limits,
                      **({"max_upload_bytes": limits["max_body_bytes"]} if limits else {}))


def _movies_app(args: argparse.Namespace):
    from lm4f.apps.recommend import create_app
    from lm4f.recsys import load_recommender
    from lm4f.saved_models import open_model

    saved = open_model(args.model, "movies")
    return create_app(load_recommender(saved), about=saved.about(), **_limits(args))


def _generate_app(args: argparse.Namespace):
    from lm4f.apps.generate import create_app
    from lm4f.generative import load_generator

    model, saved = load_generator(args.model)
    return create_app(model, about=saved.about(), settings=saved.config.get("settings"), **_limits(args))


def _assistant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("extractive", "local", "openai"),
                        default=_env("LM4F_ASSISTANT_BACKEND", "extractive"),
                        help="how answers are written (env LM4F_ASSISTANT_BACKEND; default extractive)")
    parser.add_argument("--llm", default=_env("LM4F_ASSISTANT_LLM"),
                        help="local: model folder or hub id; openai: the endpoint's model (env LM4F_ASSISTANT_LLM)")
    parser.add_argument("--base-url", default=_env("LM4F_ASSISTANT_BASE_URL"),
                        help="openai: the endpoint, e.g. http://127.0.0.1:9000/v1 (env LM4F_ASSISTANT_BASE_URL)")
    parser.add_argument("--served-model-name", default=_env("LM4F_ASSISTANT_SERVED_MODEL", "lm4f-assistant"),
                        help="the model id clients send in /v1/chat/completions (default lm4f-assistant)")


def _assistant_index(path: Path):
    """The index and what /ready says about it, from a saved version (or case folder) or a bare index folder."""
    from lm4f.retrieval import MANIFEST, load_index
    from lm4f.saved_models import METADATA, open_model, versions_in

    if not (path / METADATA).is_file() and not versions_in(path):
        if (path / MANIFEST).is_file():  # python -m lm4f.assistant build-index --out PATH
            return load_index(path), {"case": "assistant", "index": str(path)}
        if (path / "index" / MANIFEST).is_file():  # models/assistant/index, as the chapter's notebook builds it
            return load_index(path / "index"), {"case": "assistant", "index": str(path / "index")}
    saved = open_model(path, "assistant")  # checks every file, the index's included
    return load_index(saved.file(saved.config["index"]), verify=False), saved.about()


def _assistant_app(args: argparse.Namespace):
    from lm4f.apps.assistant import create_app
    from lm4f.assistant import Assistant

    if args.backend == "openai" and (not args.base_url or not args.llm):
        raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:9000/v1) and --llm "
                         "(or LM4F_ASSISTANT_BASE_URL and LM4F_ASSISTANT_LLM).")
    index, about = _assistant_index(Path(args.model))  # checks every file before the encoder is loaded
    assistant = Assistant.from_index(index, backend=args.backend, model=args.llm, base_url=args.base_url)
    return create_app(assistant, model_name=args.served_model_name, about=about, **_limits(args))


CASES: dict[str, Case] = {
    "reviews": Case("review triage (case study 6.2): /classify a review, /ask which reviews answer a question",
                    _reviews_app, _reviews_arguments),
    "images": Case("product-image classifier (case study 6.3): /predict from pixels, /predict/png from a 28x28 "
                   "PNG, /predict/image from a photo", _images_app),
    "movies": Case("movie recommender (case study 6.4): /recommend for a user or a history, /popular",
                   _movies_app),
    "assistant": Case("the customer-service assistant (case study 6.2): /ask and an OpenAI-compatible /v1",
                      _assistant_app, _assistant_arguments),
    "generate": Case("product-image generator (chapter 2.3): /generate PNGs of a requested class", _generate_app),
}


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def usage() -> str:
    cases = "\n".join(f"  {name:10s} {case.description}" for name, case in CASES.items())
    return (f"usage: python -m lm4f.serve CASE [--model PATH] [--host HOST] [--port PORT] [--workers N] [options]"
            f"\n\ncases:\n{cases}\n\nOptions of a case: python -m lm4f.serve CASE --help")


def build_parser(name: str) -> argparse.ArgumentParser:
    from lm4f.saved_models import models_dir

    case = CASES[name]
    parser = argparse.ArgumentParser(prog=f"python -m lm4f.serve {name}", description=case.description)
    parser.add_argument("--model", default=_env("LM4F_MODEL", str(models_dir() / name)),
                        help=f"saved model: a version folder or its case folder (newest version) written by "
                             f"`python -m lm4f.train {name}` (env LM4F_MODEL; default {models_dir() / name})")
    parser.add_argument("--host", default=_env("LM4F_HOST", "127.0.0.1"),
                        help="address to listen on (env LM4F_HOST; default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_whole_number("--port", "LM4F_PORT", 0, 65535),
                        default=_env("LM4F_PORT", "8000"),
                        help="port to listen on (env LM4F_PORT; default 8000)")
    parser.add_argument("--workers", type=_whole_number("--workers", "LM4F_WORKERS", 1, 64),
                        default=_env("LM4F_WORKERS", "1"),
                        help="worker processes, each loads the model (env LM4F_WORKERS; default 1)")
    parser.add_argument("--log-level", default=_env("LM4F_LOG_LEVEL", "info"),
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="env LM4F_LOG_LEVEL; default info (one JSON line per request on stdout)")
    parser.add_argument("--max-body-bytes", type=_whole_number("--max-body-bytes", "LM4F_MAX_BODY_BYTES", 1024),
                        default=_env("LM4F_MAX_BODY_BYTES"),
                        help="request-body limit in bytes, checked before parsing (env LM4F_MAX_BODY_BYTES; "
                             "default: the case's own)")
    parser.add_argument("--torch-threads", type=_whole_number("--torch-threads", "LM4F_TORCH_THREADS", 1, 256),
                        default=_env("LM4F_TORCH_THREADS", "1"),
                        help="PyTorch threads per worker (env LM4F_TORCH_THREADS; default 1: one request gains "
                             "little from more, and concurrent requests use the other cores)")
    case.add_arguments(parser)
    return parser


class UsageError(ValueError):
    """The command line names no case or an unknown one; the message is the usage text."""


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """``CASE [options]`` (or the options alone with ``LM4F_CASE`` set) -> ``(case, args)``. Raises ``UsageError``."""
    if (not argv or argv[0].startswith("-")) and _env("LM4F_CASE"):
        argv = [_env("LM4F_CASE"), *argv]
    if not argv or argv[0] not in CASES:
        problem = f"unknown case {argv[0]!r}; choose one of: {', '.join(CASES)}\n\n" if argv else ""
        raise UsageError(problem + usage())
    return argv[0], build_parser(argv[0]).parse_args(argv[1:])


def app_from_argv(argv: list[str]):
    """Parse ``CASE [options]`` and build that case's app: ``(app, args)``. Raises ``UsageError``."""
    name, args = parse(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    return CASES[name].build_app(args), args


def app_from_environment():
    """The app of one uvicorn worker process: the command line comes in ``LM4F_SERVE_ARGV`` (JSON)."""
    app, _ = app_from_argv(json.loads(os.environ[ARGV_VARIABLE]))
    return app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        name, args = parse(argv)
        if args.workers > 1 and not _env("PROMETHEUS_MULTIPROC_DIR"):  # before prometheus-client is imported
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder = tempfile.mkdtemp(prefix="lm4f-metrics-")
            atexit.register(shutil.rmtree, metrics_folder, True)
        app, args = app_from_argv(argv)  # loads and checks the model here, so a broken one stops at once
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as error:  # a missing or corrupt model, a bad option
        print(f"error: {error}", file=sys.stderr)
        return 1

    from lm4f.apps.service import log_config

    print(f"serving {name} on http://{args.host}:{args.port} with {args.workers} worker(s) (Ctrl+C stops); "
          f"docs at /docs, metrics at /metrics", file=sys.stderr, flush=True)
    # uvicorn's own access log is off: the apps write one JSON line per request (lm4f.apps.service)
    options = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                   log_config=log_config(args.log_level))
    if args.workers == 1:
        uvicorn.run(app, **options)
        return 0
    del app  # each worker builds its own from the same command line
    os.environ[ARGV_VARIABLE] = json.dumps(argv)  # the workers inherit the environment (LM4F_* included)
    _run_workers(args.workers, options)
    return 0


class NoDelayConfig(uvicorn.Config):
    """uvicorn's ``Config`` whose listening socket has TCP_NODELAY set (Linux passes it to accepted sockets).

    With several workers uvicorn binds the socket itself as ``socket.socket(family)``, whose protocol
    number is 0, and asyncio only switches Nagle's algorithm off on sockets that say IPPROTO_TCP. A
    response written in two pieces (headers, then body) then waits for the client's delayed ACK:
    about 40 ms per request on Linux (``/health`` took 1.2 ms with one worker, 44 ms with two;
    ``benchmarks/bench_serving.py`` measures the served cases under load).
    """

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _run_workers(workers: int, options: dict) -> None:
    """What ``uvicorn.run(..., workers=N)`` does, with the listening socket of ``NoDelayConfig``."""
    from uvicorn.supervisors import Multiprocess

    config = NoDelayConfig("lm4f.serve:app_from_environment", factory=True, workers=workers, **options)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    raise SystemExit(main())
