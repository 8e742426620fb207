"""Serve a case study's model as a real HTTP service: ``python -m lm4f.serve CASE --port PORT [options]``.

    python -m lm4f.serve assistant --port 8000                       # the customer-service assistant
    python -m lm4f.serve assistant --port 8000 --backend openai --base-url http://127.0.0.1:9000/v1 --model NAME

Each case registers a ``Case``: its options (each with an environment-variable default, so a
container can be configured without flags) and a function that builds its FastAPI app. The
server is uvicorn, bound to 127.0.0.1 unless ``--host`` says otherwise. Adding a case (``reviews``,
``images``, ``movies``) means adding one entry to ``CASES``.

Assistant options and their environment variables:

    --backend   LM4F_ASSISTANT_BACKEND   extractive (default, offline) | local | openai
    --index     LM4F_ASSISTANT_INDEX     index folder (default models/assistant/index)
    --model     LM4F_ASSISTANT_MODEL     local: model folder or hub id; openai: the endpoint's model name
    --base-url  LM4F_ASSISTANT_BASE_URL  openai: the endpoint, e.g. https://api.openai.com/v1
    --served-model-name  LM4F_ASSISTANT_SERVED_MODEL  the model id clients send (default lm4f-assistant)
    --host / --port      LM4F_HOST / LM4F_PORT
    --torch-threads      LM4F_TORCH_THREADS      PyTorch threads (default 1)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Case", "CASES", "UsageError", "app_from_argv", "build_parser", "main"]


@dataclass(frozen=True)
class Case:
    """One servable case study: a one-line description, its options and its app builder."""

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build_app: Callable[[argparse.Namespace], object]


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _assistant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("extractive", "local", "openai"),
                        default=_env("LM4F_ASSISTANT_BACKEND", "extractive"),
                        help="how answers are written (env LM4F_ASSISTANT_BACKEND; default extractive)")
    parser.add_argument("--index", default=_env("LM4F_ASSISTANT_INDEX", "models/assistant/index"),
                        help="index folder built by `python -m lm4f.assistant build-index` (env LM4F_ASSISTANT_INDEX)")
    parser.add_argument("--model", default=_env("LM4F_ASSISTANT_MODEL"),
                        help="local: model folder or hub id; openai: the endpoint's model (env LM4F_ASSISTANT_MODEL)")
    parser.add_argument("--base-url", default=_env("LM4F_ASSISTANT_BASE_URL"),
                        help="openai: the endpoint, e.g. http://127.0.0.1:9000/v1 (env LM4F_ASSISTANT_BASE_URL)")
    parser.add_argument("--served-model-name", default=_env("LM4F_ASSISTANT_SERVED_MODEL", "lm4f-assistant"),
                        help="the model id clients send in /v1/chat/completions (default lm4f-assistant)")


def _assistant_app(args: argparse.Namespace):
    from lm4f.apps.assistant import create_app
    from lm4f.assistant import Assistant
    from lm4f.retrieval import load_index

    if args.backend == "openai" and (not args.base_url or not args.model):
        raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:9000/v1) and --model "
                         "(or LM4F_ASSISTANT_BASE_URL and LM4F_ASSISTANT_MODEL).")
    index = load_index(args.index)  # checks every file before the encoder is loaded
    assistant = Assistant.from_index(index, backend=args.backend, model=args.model, base_url=args.base_url)
    return create_app(assistant, model_name=args.served_model_name)


CASES: dict[str, Case] = {
    "assistant": Case("the customer-service assistant (case study 6.2): /ask and an OpenAI-compatible /v1",
                      _assistant_arguments, _assistant_app),
}


def usage() -> str:
    cases = "\n".join(f"  {name:10s} {case.description}" for name, case in CASES.items())
    return (f"usage: python -m lm4f.serve CASE --port PORT [--host HOST] [options]\n\ncases:\n{cases}\n\n"
            "Options of a case: python -m lm4f.serve CASE --help")


def build_parser(name: str) -> argparse.ArgumentParser:
    case = CASES[name]
    parser = argparse.ArgumentParser(prog=f"python -m lm4f.serve {name}", description=case.description)
    parser.add_argument("--host", default=_env("LM4F_HOST", "127.0.0.1"),
                        help="address to listen on (env LM4F_HOST; default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=int(_env("LM4F_PORT", 8000)),
                        help="port to listen on (env LM4F_PORT; default 8000)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--torch-threads", type=int, default=int(_env("LM4F_TORCH_THREADS", 1)),
                        help="PyTorch threads per request (env LM4F_TORCH_THREADS; default 1: a short question "
                             "gains nothing from more, and concurrent requests use the other cores)")
    case.add_arguments(parser)
    return parser


class UsageError(ValueError):
    """The command line names no case or an unknown one; the message is the usage text."""


def app_from_argv(argv: list[str]):
    """Parse ``CASE [options]`` and build that case's app: ``(app, args)``. Raises ``UsageError``."""
    if not argv or argv[0] not in CASES:
        problem = f"unknown case {argv[0]!r}; choose one of: {', '.join(CASES)}\n\n" if argv else ""
        raise UsageError(problem + usage())
    args = build_parser(argv[0]).parse_args(argv[1:])
    if args.torch_threads < 1:
        raise ValueError(f"--torch-threads must be at least 1, got {args.torch_threads}.")
    import torch

    torch.set_num_threads(args.torch_threads)
    return CASES[argv[0]].build_app(args), args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        app, args = app_from_argv(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as error:  # a missing or corrupt index, a bad option
        print(f"error: {error}", file=sys.stderr)
        return 1
    import uvicorn

    print(f"serving {argv[0]} on http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
