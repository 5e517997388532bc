#!/usr/bin/env python3
"""Long fuzzing runs of lmlink's decoders and of the whole client, from one command.

    python3 tasks.py fuzz                                       # every target, 600 s in all
    python3 tasks.py fuzz --target sse --seconds 60
    python3 tasks.py fuzz --hypothesis --examples 20000

(``tasks.py fuzz`` installs the ``test`` and ``fuzz`` dependency groups into ``.venv`` and
runs this script with the arguments given.)

The targets are the functions the CI fuzz tests use (``tests/test_fuzz_decoders.py`` and
``tests/test_fuzz_client.py``): each takes generated input and fails when anything but an
``lmlink.LMLinkError`` (or a clean return) comes out of lmlink.

- ``sse``: the SSE decoder on arbitrary bytes in arbitrary pieces, any line cap;
- ``accumulator``: the stream accumulator on arbitrary events with JSON-ish data;
- ``errmap``: ``error_from_response`` on any status, header values and body;
- ``payload``: ``error_from_payload`` on any JSON value;
- ``body``: ``decode_answer`` / ``decode_models`` on any body;
- ``client``: both clients against a raw-socket server answering with the input's bytes.

With atheris installed (the ``fuzz`` group; it has wheels for Linux x86-64) each target
runs under atheris (coverage-guided, libFuzzer) in its own process for its share of
``--seconds``; a crash leaves its input as ``<target>-crash-*`` in ``--artifacts``
(``.lmlink/fuzz/``, git-ignored) and the run exits 1.

Without atheris (or with ``--hypothesis``) it runs the same targets as the hypothesis tests
with ``--examples`` examples each (``LMLINK_FUZZ_EXAMPLES``), through pytest.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TARGETS = ("sse", "accumulator", "errmap", "payload", "body", "client")
INSTRUMENTED = (
    "lmlink",
    "lmlink._sse",
    "lmlink._answer",
    "lmlink._errmap",
    "lmlink._wire",
    "lmlink._http.response",
    "lmlink._http.request",
    "lmlink._http.common",
    "lmlink._aclient",
    "lmlink._astreaming",
    "lmlink._http.aio_connection",
    "lmlink._http.aio",
)


# -- input builders for atheris ---------------------------------------------------------------


def _json(fdp: Any, vocab: list[str], depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 6 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        if fdp.ConsumeBool():
            return vocab[fdp.ConsumeIntInRange(0, len(vocab) - 1)]
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 5:
        return [_json(fdp, vocab, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    out = {}
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        if fdp.ConsumeBool():
            key = vocab[fdp.ConsumeIntInRange(0, len(vocab) - 1)]
        else:
            key = fdp.ConsumeUnicodeNoSurrogates(6)
        out[key] = _json(fdp, vocab, depth + 1)
    return out


def _data(fdp: Any, vocab: list[str]) -> bytes:
    import orjson

    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    data = orjson.dumps(_json(fdp, vocab))
    if fdp.ConsumeIntInRange(0, 7) == 0:
        data = data[: fdp.ConsumeIntInRange(0, len(data))]
    return data


def _atheris_target(name: str) -> Any:
    """The TestOneInput function for ``name`` (lmlink imported under instrumentation)."""
    import atheris

    with atheris.instrument_imports(include=["lmlink"]):
        for module in INSTRUMENTED:
            importlib.import_module(module)
    sys.path.insert(0, str(TESTS))
    import test_fuzz_decoders as dec

    # The API key is in the vocabulary: the targets check that redaction blanks it.
    vocab = [*dec.VOCAB, "<think>", "</think>", "[DONE]", "Loading model", "context length"]
    vocab.append(dec.KEY)
    headers = ["retry-after", "retry-after-ms", "location", "content-type"]

    def run(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if name == "sse":
            max_line = [1, 7, 64, 1 << 20][fdp.ConsumeIntInRange(0, 3)]
            cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8))]
            dec.fuzz_sse(fdp.ConsumeBytes(fdp.remaining_bytes()), cuts, max_line)
        elif name == "accumulator":
            events = []
            for _ in range(fdp.ConsumeIntInRange(0, 12)):
                kind = ["message", "error", "ping", ""][fdp.ConsumeIntInRange(0, 3)]
                events.append((kind, _data(fdp, vocab)))
            dec.fuzz_accumulator(events)
        elif name == "errmap":
            status = fdp.ConsumeInt(4)
            hdrs = {}
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                key = headers[fdp.ConsumeIntInRange(0, len(headers) - 1)]
                hdrs[key] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
            dec.fuzz_error_response(status, hdrs, _data(fdp, vocab))
        elif name == "payload":
            status = [0, 200, 400, 429, 500, 503][fdp.ConsumeIntInRange(0, 5)]
            dec.fuzz_payload(_json(fdp, vocab), status)
        elif name == "body":
            dec.fuzz_chat_body(_data(fdp, vocab))
        else:
            client_target(fdp.ConsumeIntInRange(1, 8), fdp.ConsumeBytes(fdp.remaining_bytes()))

    client_rig: list[Any] = []

    def client_target(pieces: int, payload: bytes) -> None:
        import test_fuzz_client as cli

        if not client_rig:
            server = cli.RawServer()
            client_rig[:] = [cli.Clients(server.url), server]
        cli.fuzz_client(client_rig[0], client_rig[1], payload, pieces)

    return run


def _run_atheris_child(name: str, seconds: int, artifacts: Path) -> None:
    import atheris

    target = _atheris_target(name)
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-max_len=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{name}-",
    ]
    atheris.Setup(args, target)
    atheris.Fuzz()


# -- drivers ----------------------------------------------------------------------------------


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(targets: list[str], seconds: int, artifacts: Path) -> int:
    artifacts.mkdir(parents=True, exist_ok=True)
    share = max(seconds // len(targets), 1)
    failed = False
    print(f"{'target':<12} {'executions':>12} {'seconds':>8} {'exec/s':>8}  result", flush=True)
    for name in targets:
        started = time.monotonic()
        cmd = [sys.executable, __file__, "--child", name, "--seconds", str(share)]
        cmd += ["--artifacts", str(artifacts)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        output = proc.stdout + proc.stderr
        runs = re.findall(r"Done (\d+) runs in (\d+) second", output)
        execs = int(runs[-1][0]) if runs else 0
        secs = time.monotonic() - started
        ok = proc.returncode == 0
        failed |= not ok
        if not ok:
            print(f"--- {name}: exit {proc.returncode}\n{output[-4000:]}", file=sys.stderr)
        result = "ok" if ok else "CRASH (see above)"
        print(f"{name:<12} {execs:>12,} {secs:>8.0f} {execs / secs:>8,.0f}  {result}", flush=True)
    return 1 if failed else 0


def run_hypothesis(examples: int, targets: list[str]) -> int:
    env = dict(os.environ, LMLINK_FUZZ_EXAMPLES=str(examples))
    files = ["tests/test_fuzz_decoders.py"]
    if "client" in targets:
        files.append("tests/test_fuzz_client.py")
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"]
    print(f"hypothesis: {examples} examples per property: {' '.join(cmd[2:])}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, action="append", help="default: all")
    parser.add_argument("--seconds", type=int, default=600, help="atheris: total run time")
    parser.add_argument("--examples", type=int, default=20000, help="hypothesis fallback")
    parser.add_argument("--hypothesis", action="store_true", help="use hypothesis, not atheris")
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".lmlink" / "fuzz")
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_atheris_child(args.child, args.seconds, args.artifacts)
        return 0
    targets = args.target or list(TARGETS)
    if args.hypothesis or not _have_atheris():
        if not args.hypothesis:
            print("atheris is not installed: falling back to a long hypothesis run", flush=True)
        return run_hypothesis(args.examples, targets)
    return run_atheris(targets, args.seconds, args.artifacts)


if __name__ == "__main__":
    sys.exit(main())
