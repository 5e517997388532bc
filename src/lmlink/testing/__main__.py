"""``python -m lmlink.testing``: run the fake server in the foreground until Ctrl-C.

Requests with a JSON schema (``lmlink classify``, ``extract``, ``chat --json``) get JSON of
that shape, labels picked by keywords (:func:`~lmlink.testing.sensible_reply`); others get
the canned reply. ``POST /v1/embeddings`` (``lmlink embed``) gets each text's fixed vector.

Example::

    $ python -m lmlink.testing --port 8080 --dialect ollama --delay 0.05
    lmlink test server: http://127.0.0.1:8080/v1 (model fake-model); Ctrl-C stops it
    $ python -m lmlink.testing --port 8080 --persona vllm     # count_tokens, context_length
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading

from ._answers import sensible_reply
from ._http import RecordedRequest
from ._personas import PERSONAS
from ._replies import DIALECTS, Reply
from ._server import FakeServer

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until interrupted. Example: ``main(["--port", "0"])``."""
    parser = argparse.ArgumentParser(
        prog="python -m lmlink.testing",
        description="Run lmlink's fake OpenAI-compatible server: canned answers, JSON "
        "shaped by the request's schema (classify labels picked by keywords).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for any (8080)")
    parser.add_argument("--model", default="fake-model", help="model name to report")
    parser.add_argument("--dialect", default="openai", choices=DIALECTS, help="chunk layout")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--persona",
        choices=sorted(PERSONAS),
        help="the real server to imitate where servers differ: its tokenizer and "
        "context-window routes, error shapes, model listing (none: plain OpenAI-style)",
    )
    args = parser.parse_args(argv)
    default = Reply(dialect=args.dialect, delay=args.delay)

    def respond(request: RecordedRequest) -> Reply | None:
        shaped = sensible_reply(request)  # in the dialect and pace asked for, like the rest
        return None if shaped is None else dataclasses.replace(default, content=shaped.content)

    server = FakeServer(
        args.model,
        host=args.host,
        port=args.port,
        default=default,
        responder=respond,
        persona=args.persona,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        # Printed inside the try: a Ctrl-C right after the URL appears must still stop cleanly.
        like = f", like {args.persona}" if args.persona else ""
        print(
            f"lmlink test server: {server.url} (model {args.model}{like}); Ctrl-C stops it",
            flush=True,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
