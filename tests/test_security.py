"""Security: the API key never leaks, a redirect never carries it anywhere, TLS is verified
unless switched off, a huge response cannot blow up memory, and a batch cannot be made to
write outside its output file.

Servers are real and local: ``FakeServer`` (with ``api_key`` set, so the key is really sent),
a raw-socket TLS server with a self-signed certificate made at test time (openssl CLI), and
raw-socket servers that flood or echo. Peak memory is measured in a child process
(``VmHWM``), so the figure is the client's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmlink
from apis import API
from batch_helpers import clean_env, read_jsonl, run_cli, write_jsonl
from lmlink.testing import FakeServer, RecordedRequest, Reply

KEY = "sk-lmlink-SECRET-4b1d9e7a2c"
MiB = 1 << 20


def _auth(request: RecordedRequest) -> str:
    """What the server echoes: the Authorization header it received ("Bearer <key>")."""
    return request.headers.get("authorization", "no key sent")


def _leaks(exc: BaseException) -> list[str]:
    """Every view of an error that holds the key: str, repr, args, attributes, the pickle
    and the formatted traceback (what ``log.exception`` would print)."""
    views = {
        "str": str(exc),
        "repr": repr(exc),
        "args": repr(exc.args),
        "attributes": repr(vars(exc)),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    found = [name for name, text in views.items() if KEY in text]
    if KEY.encode() in pickle.dumps(exc):
        found.append("pickle")
    return found


# -- the key in reprs, errors and logs ---------------------------------------------------------


def test_client_reprs_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """repr() of Client and AsyncClient never shows the key, given or from the environment."""
    client = lmlink.Client(endpoint="http://127.0.0.1:9/v1", model="m", api_key=KEY)
    assert KEY not in repr(client)
    assert "***" in repr(client)
    monkeypatch.setenv("LMLINK_API_KEY", KEY)
    aclient = lmlink.AsyncClient(endpoint="http://127.0.0.1:9/v1", model="m")
    assert KEY not in repr(aclient)
    assert KEY not in repr(lmlink.Client(endpoint="http://127.0.0.1:9/v1"))


# (id, the reply given the echoed "Bearer <key>", the modes it exists in)
_ECHOES: list[tuple[str, Callable[[str], Reply], tuple[str, ...]]] = [
    (
        "400-openai-shape",
        lambda a: Reply.error(400, f"invalid header {a}"),
        ("plain", "stream"),
    ),
    (
        "401-text",
        lambda a: Reply.error(401, f"bad key {a}", shape="text"),
        ("plain", "stream"),
    ),
    (
        "403-detail",
        lambda a: Reply.error(403, f"{a} refused", shape="detail"),
        ("plain", "stream"),
    ),
    ("422-flat-shape", lambda a: Reply.error(422, a, shape="flat"), ("plain", "stream")),
    ("429-tgi-shape", lambda a: Reply.error(429, a, shape="tgi"), ("plain", "stream")),
    ("503-loading", lambda a: Reply.error(503, f"Loading model {a}"), ("plain", "stream")),
    ("500-string-shape", lambda a: Reply.error(500, a, shape="string"), ("plain", "stream")),
    (
        "400-key-in-type-and-code",
        lambda a: Reply.error(400, "no", error_type=a, code=a),
        ("plain", "stream"),
    ),
    (
        "307-location",
        lambda a: Reply(status=307, headers={"Location": f"http://127.0.0.1:9/?k={a}"}, body=b""),
        ("plain", "stream"),
    ),
    (
        "200-in-band-error",
        lambda a: Reply(body_override={"error": {"message": f"in-band {a}"}}),
        ("plain",),
    ),
    (
        "200-no-choices",
        lambda a: Reply(body_override={"object": "list", "echo": a}),
        ("plain",),
    ),
    (
        "200-not-json",
        lambda a: Reply(body_override=f"<html>{a}</html>"),
        ("plain",),
    ),
    (
        "200-json-string",
        lambda a: Reply(body_override=json.dumps(a)),
        ("plain",),
    ),
    (
        "in-band-error",
        lambda a: Reply(content="one two three", error_at=2, error_body={"error": {"message": a}}),
        ("stream",),
    ),
    (
        "legacy-error-field",
        lambda a: Reply(content="one two", error_at=1, error_body={"error": a}, legacy_error=True),
        ("stream",),
    ),
    (
        "in-band-error-not-json",
        lambda a: Reply(content="x", error_at=0, error_body=f"not json {a}"),
        ("stream",),
    ),
    (
        "cut-after-echoed-content",
        lambda a: Reply(content=f"the key is {a} and more words follow", cut_after=3),
        ("stream",),
    ),
]
ECHOES = [
    pytest.param(echo, mode == "stream", id=f"{mode}-{name}")
    for name, echo, modes in _ECHOES
    for mode in modes
]


@pytest.mark.parametrize(("echo", "stream"), ECHOES)
def test_errors_never_carry_an_echoed_key(
    make_api: Callable[..., API], server: FakeServer, echo: Callable[[str], Reply], stream: bool
) -> None:
    """A server that echoes the Authorization header into its error: the error's str, repr,
    args, attributes, pickle and formatted traceback never hold the key."""
    server.api_key = KEY
    server.responder = lambda req: echo(_auth(req))
    # No retries and no waiting for a "loading" server: one request, one error.
    api = make_api(api_key=KEY, retry=lmlink.RetryPolicy(max_retries=0, load_wait=0))
    with pytest.raises(lmlink.LMLinkError) as info:
        api.chat_stream("hi") if stream else api.chat("hi")
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert _leaks(info.value) == []


class EchoHeadServer:
    """A raw server whose malformed response head echoes the request's Authorization."""

    def __init__(self, template: bytes) -> None:
        self.template = template
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:  # bounded: EOF or the timeout
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                auth = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"authorization:")
                )
                conn.sendall(self.template.replace(b"AUTH", auth))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize(
    "template",
    [b"HTTP/1.1 AUTH\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-Echo AUTH\r\n\r\n"],
    ids=["status-line", "header-line"],
)
def test_malformed_head_echoing_the_key_is_redacted(template: bytes) -> None:
    """A malformed response head that echoes the key gives an error without the key."""
    echo = EchoHeadServer(template)
    try:
        client = lmlink.Client(endpoint=echo.url, model="m", api_key=KEY, max_retries=0)
        with pytest.raises(lmlink.APIConnectionError) as info:
            client.chat("hi")
        client.close()
    finally:
        echo.close()
    assert _leaks(info.value) == []


def _straddling(prefix: bytes, suffix: bytes) -> bytes:
    """A response whose quoted line puts the key across the 100-character cut of the
    error message: "Bearer " + 13 characters of the key before it, the rest after."""
    start = prefix.rsplit(b"\n", 1)[-1]  # the quoted line starts after the last newline
    if b":" in start:  # a header value is quoted without its name
        start = b""
    pad = b"x" * (80 - len(start))
    return prefix + pad + b"AUTH" + suffix


@pytest.mark.parametrize(
    "template",
    [
        _straddling(b"HTTP/1.1 ", b"\r\n\r\n"),
        _straddling(b"HTTP/1.1 200 OK\r\nX-Echo ", b"\r\n\r\n"),
        _straddling(b"HTTP/1.1 200 OK\r\nContent-Length:", b"\r\n\r\n"),
        _straddling(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"\r\n"),
    ],
    ids=["status-line", "header-line", "content-length", "chunk-size"],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_key_cut_by_a_quoted_line_is_still_redacted(template: bytes, kind: str) -> None:
    """Server bytes are quoted in an error cut to 100 characters; a key that straddles the
    cut leaves no part of itself: it is blanked before the line is cut."""
    echo = EchoHeadServer(template)
    try:
        if kind == "sync":
            client = lmlink.Client(endpoint=echo.url, model="m", api_key=KEY, max_retries=0)
            with pytest.raises(lmlink.APIConnectionError) as info:
                client.chat("hi")
            client.close()
        else:

            async def call() -> None:
                async with lmlink.AsyncClient(
                    endpoint=echo.url, model="m", api_key=KEY, max_retries=0
                ) as client:
                    await client.chat("hi")

            with pytest.raises(lmlink.APIConnectionError) as info:
                asyncio.run(call())
    finally:
        echo.close()
    text = str(info.value)
    assert "malformed HTTP response" in text
    assert "***" in text
    assert KEY[:6] not in text


@pytest.mark.parametrize("retries", [0, 1])
def test_structured_output_errors_never_carry_an_echoed_key(
    make_api: Callable[..., API],
    server: FakeServer,
    caplog: pytest.LogCaptureFixture,
    retries: int,
) -> None:
    """The validator quotes the failing value; when the model's answer echoes the key, the
    StructuredOutputError (message, raw, errors) and the re-ask log record blank it."""
    caplog.set_level(logging.DEBUG, logger="lmlink")
    server.api_key = KEY
    server.responder = lambda r: Reply(content=json.dumps({"label": _auth(r)}))
    schema = {
        "type": "object",
        "properties": {"label": {"enum": ["a", "b"]}},
        "required": ["label"],
    }
    api = make_api(api_key=KEY, structured_retries=retries)
    for call in (api.chat, api.chat_stream):
        with pytest.raises(lmlink.StructuredOutputError) as info:
            call("label it", response_format=schema)
        assert _leaks(info.value) == []
        assert "***" in info.value.raw
        assert info.value.errors
        assert all("is not one of" in e for e in info.value.errors)
    records = [r.getMessage() for r in caplog.records if r.name.startswith("lmlink")]
    if retries:
        assert any("asking again" in m for m in records)
    assert not [m for m in records if KEY in m]


def test_debug_logs_never_hold_the_key(
    make_api: Callable[..., API], server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With the lmlink logger at DEBUG, retries after echoing 503s, echoing malformed stream
    chunks and errors leave no record (message, arguments or traceback) with the key."""
    caplog.set_level(logging.DEBUG, logger="lmlink")
    server.api_key = KEY
    api = make_api(api_key=KEY, retry=lmlink.RetryPolicy(max_retries=2, backoff_initial=0))
    script: list[Callable[[str], Reply]] = [
        lambda a: Reply.error(503, f"busy {a}", retry_after=0),
        lambda a: Reply.error(429, f"slow down {a}", retry_after=0),
        lambda a: Reply(content="fine"),
        lambda a: Reply(
            raw_body_chunks=[
                f'data: {{"choices": oops {a}\n\n'.encode(),
                b'data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n',
                b"data: [DONE]\n\n",
            ]
        ),
        lambda a: Reply.error(400, f"nope {a}"),
    ]
    server.responder = lambda req: script.pop(0)(_auth(req))
    assert api.chat("one").content == "fine"
    assert api.chat_stream("two").content == "ok"
    with pytest.raises(lmlink.BadRequestError):
        api.chat("three")
    records = [r for r in caplog.records if r.name.startswith("lmlink")]
    assert any("retry" in r.getMessage() for r in records)
    assert any("skipped a stream chunk" in r.getMessage() for r in records)
    for record in records:
        text = record.getMessage() + repr(record.args)
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        assert KEY not in text, record.getMessage()


# -- the batch runner's files -------------------------------------------------------------------


def _batch_echo(request: RecordedRequest) -> Reply:
    """Per item: answers, error bodies and stream errors that echo the key."""
    prompt = request.json["messages"][-1]["content"]
    auth = _auth(request)
    n = int(prompt.split()[-1])
    kind = n % 5
    if kind == 1:
        return Reply.error(400, f"header was {auth}")
    if kind == 2:
        return Reply(content="a b c", error_at=1, error_body={"error": {"message": auth}})
    if kind == 3:
        return Reply.error(500, f"crash near {auth}", shape="text")
    if kind == 4:
        return Reply(
            raw_body_chunks=[
                f"data: {{broken {auth}\n\n".encode(),
                b'data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n',
                b"data: [DONE]\n\n",
            ]
        )
    return Reply(content=f"answer {n}")


def _files_with_key(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and KEY.encode() in p.read_bytes()
    )


def test_batch_output_and_cache_never_hold_the_key(tmp_path: Path) -> None:
    """``lmlink batch`` with a key, against a server that echoes it into error bodies, stream
    errors and malformed chunks: the output, the SQLite cache (with its WAL) and the
    command's stdout/stderr never contain the key's bytes."""
    rows = [{"id": f"k{i}", "prompt": f"item {i}"} for i in range(20)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out" / "answers.jsonl"
    out.parent.mkdir()
    with FakeServer(api_key=KEY, responder=_batch_echo) as server:
        args = ["batch", str(src), "-o", str(out), "--cache", str(out.parent / "cache.sqlite")]
        args += ["-e", server.url, "-m", "fake-model", "--progress", "lines"]
        result = run_cli(args, LMLINK_API_KEY=KEY)
        assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.returncode == 3, result.stderr  # error lines: 3
    lines = read_jsonl(out)
    assert len(lines) == 20
    assert sum("error" in line for line in lines) == 12
    assert KEY not in result.stdout + result.stderr
    assert _files_with_key(tmp_path) == []


def _echo_text(auth: str) -> Reply:
    return Reply(content=f"hi {auth}", reasoning=f"I saw {auth}")


def _echo_json(auth: str) -> Reply:
    return Reply(content=json.dumps({auth: [auth, {"k": auth}], "ok": True}))


@pytest.mark.parametrize(
    ("echo", "flags"), [(_echo_text, []), (_echo_json, ["--json"])], ids=["text", "json"]
)
def test_batch_files_never_hold_a_key_echoed_in_answers(
    tmp_path: Path, echo: Callable[[str], Reply], flags: list[str]
) -> None:
    """An answer that echoes the key (in content, reasoning, or keys and values of the parsed
    object) leaves no key in the output line or the SQLite cache, and still counts as done."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "hi"}])
    cache = ["--cache", str(tmp_path / "c.sqlite")]
    with FakeServer(api_key=KEY, responder=lambda r: echo(_auth(r))) as server:
        for run in range(2):  # the second run, to a new file, answers from the cache
            out = tmp_path / f"out{run}.jsonl"
            args = ["batch", str(src), "-o", str(out), *cache, *flags, "--progress", "off"]
            result = run_cli([*args, "-e", server.url, "-m", "fake-model"], LMLINK_API_KEY=KEY)
            assert result.returncode == 0, result.stderr
            [line] = read_jsonl(out)
            assert "error" not in line
            assert "***" in line["content"]
            assert _files_with_key(tmp_path) == []
        assert len(server.requests) == 1


def test_batch_schema_failures_never_hold_the_key(tmp_path: Path) -> None:
    """Answers that echo the key and fail the schema: the error lines, the printed summary
    and every file are free of the key."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"s{i}", "prompt": "hi"} for i in range(3)])
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {"type": "object", "properties": {"label": {"enum": ["a"]}}, "required": ["label"]}
        )
    )
    out = tmp_path / "out.jsonl"
    echo = lambda r: Reply(content=json.dumps({"label": _auth(r)}))  # noqa: E731
    with FakeServer(api_key=KEY, responder=echo) as server:
        args = ["batch", str(src), "-o", str(out), "--schema", str(schema), "--progress", "off"]
        result = run_cli([*args, "-e", server.url, "-m", "fake-model"], LMLINK_API_KEY=KEY)
    assert result.returncode == 3, result.stderr  # error lines: 3
    lines = read_jsonl(out)
    assert [line["error"]["type"] for line in lines] == ["StructuredOutputError"] * 3
    assert all("***" in line["error"]["message"] for line in lines)
    assert KEY not in result.stdout + result.stderr
    assert _files_with_key(tmp_path) == []


# -- redirects ------------------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[FakeServer]:
    """A second server, another origin (another port), that must never be contacted."""
    with FakeServer() as srv:
        yield srv


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_redirect_is_not_followed(
    make_api: Callable[..., API],
    server: FakeServer,
    elsewhere: FakeServer,
    status: int,
    stream: bool,
) -> None:
    """A redirect to another origin is an error; the other server sees no connection at all
    and the first one exactly one request (a redirect is not retried)."""
    target = f"{elsewhere.url}/chat/completions"
    server.enqueue(Reply(status=status, headers={"Location": target}, body=b""))
    api = make_api(api_key=KEY)
    with pytest.raises(lmlink.APIStatusError) as info:
        api.chat_stream("hi") if stream else api.chat("hi")
    assert info.value.status_code == status
    assert "does not follow redirects" in str(info.value)
    assert server.stats.chat_requests == 1
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert elsewhere.stats.connections_opened == 0
    assert elsewhere.stats.requests == 0


@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "HTTPS_PROXY"])
def test_proxy_variables_are_not_used(
    make_api: Callable[..., API],
    server: FakeServer,
    elsewhere: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    var: str,
) -> None:
    """A proxy variable in the environment neither captures the request nor sees the key:
    the server gets it directly, the would-be proxy gets no connection."""
    monkeypatch.setenv(var, f"http://{elsewhere.host}:{elsewhere.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert make_api(api_key=KEY).chat("hi").content
    assert server.stats.chat_requests == 1
    assert elsewhere.stats.connections_opened == 0


def test_redirect_on_models_is_not_followed(elsewhere: FakeServer) -> None:
    """GET /models answered with a 308 elsewhere: an error, and nothing reaches the target."""
    body = b""
    head = f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {elsewhere.url}/models\r\n"
    redirect = EchoHeadServer((head + f"Content-Length: {len(body)}\r\n\r\n").encode())
    try:
        client = lmlink.Client(endpoint=redirect.url, model="m", api_key=KEY)
        with pytest.raises(lmlink.APIStatusError) as info:
            client.models()
        client.close()
    finally:
        redirect.close()
    assert info.value.status_code == 308
    assert elsewhere.stats.connections_opened == 0


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1, made now with the openssl CLI (the venv
    has no ``cryptography``)."""
    if shutil.which("openssl") is None:
        pytest.skip("neither cryptography nor the openssl CLI is available to make a cert")
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


CHAT = b'{"choices":[{"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}]}'


class TLSServer:
    """HTTPS on 127.0.0.1: answers one canned chat completion per connection, and records
    the handshakes that failed and the request heads that arrived."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*cert)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.heads: list[bytes] = []
        self.failed_handshakes = 0
        self.settled = threading.Event()  # set once a connection was handled either way
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():  # bounded: ends when closed
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.failed_handshakes += 1
                raw.close()
                self.settled.set()
                continue
            with contextlib.suppress(OSError), conn:
                head = b""
                while b"\r\n\r\n" not in head:  # bounded: EOF or the timeout
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                if head:
                    self.heads.append(head)
                    self.settled.set()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                        b"\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT
                    )

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[TLSServer]:
    """A TLS server with the self-signed certificate."""
    srv = TLSServer(certificate)
    yield srv
    srv.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_verified_by_default(
    make_api: Callable[..., API], tls_server: TLSServer, host: str
) -> None:
    """By default a self-signed certificate (and a name it was not issued for) is refused
    with reason "tls" before any byte of the request, key included, is sent."""
    api = make_api(endpoint=tls_server.url(host), api_key=KEY, max_retries=2)
    with pytest.raises(lmlink.APIConnectionError) as info:
        api.chat("hi")
    assert info.value.reason == "tls"
    assert info.value.request_sent is False
    # The server's side of the handshake ends a moment after the client's: wait for it.
    tls_server.settled.wait(timeout=10)
    assert tls_server.failed_handshakes >= 1
    assert tls_server.heads == []


def test_tls_opt_out_and_own_trust(
    make_api: Callable[..., API], tls_server: TLSServer, certificate: tuple[Path, Path]
) -> None:
    """verify=False is the explicit opt-out; an SSLContext trusting the certificate also works."""
    assert make_api(endpoint=tls_server.url(), verify=False).chat("hi").content == "over TLS"
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    assert make_api(endpoint=tls_server.url(), verify=trusting).chat("hi").content == "over TLS"
    assert len(tls_server.heads) == 2


# -- response size caps -----------------------------------------------------------------------------

FLOOD_TOTAL = 300 * MiB
BLOCK = 1 * MiB


def _sse_delta(text: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % text.encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


@functools.lru_cache(maxsize=2)
def _gzip_bomb(prefix: bytes) -> bytes:
    """``prefix`` and then 300 MB of one repeated byte, gzipped (about 300 KB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"x" * BLOCK
    parts = [packer.compress(prefix)]
    parts += [packer.compress(block) for _ in range(FLOOD_TOTAL // BLOCK)]
    return b"".join(parts) + packer.flush()


class FloodServer:
    """Answers every request with a huge response, made lazily, until the client hangs up or
    300 MB went out. ``mode`` picks its shape."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():  # bounded: ends when closed
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:  # bounded: EOF or the timeout
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            for piece in self._pieces():
                conn.sendall(piece)
                self.sent += len(piece)

    def _pieces(self) -> Iterator[bytes]:
        mode = self.mode
        chunked = b"Transfer-Encoding: chunked\r\n\r\n"
        if mode == "gzip-bomb":  # 300 MB of zeros in about 300 KB, head and body in one write
            packed = _gzip_bomb(b"")
            yield (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: %d\r\n\r\n" % len(packed)
            ) + packed
            return
        if mode == "sse-gzip-bomb":  # one endless SSE line, gzipped, in 64 KiB HTTP chunks
            packed = _gzip_bomb(b'data: {"choices":[{"delta":{"content":"')
            yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            yield b"Content-Encoding: gzip\r\n" + chunked
            for start in range(0, len(packed), 65536):
                yield _chunk(packed[start : start + 65536])
            return
        if mode == "declared-2gb":
            yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            yield b"Content-Length: 2147483648\r\n\r\n"
            block = b"x" * BLOCK
        elif mode == "json-flood":
            yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + chunked
            yield _chunk(b'{"choices":[{"message":{"content":"')
            block = _chunk(b"x" * BLOCK)
        elif mode == "sse-endless-line":
            yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + chunked
            yield _chunk(b'data: {"choices":[{"delta":{"content":"')
            block = _chunk(b"x" * BLOCK)
        else:  # "sse-endless-deltas": well-formed events, forever
            yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + chunked
            block = _chunk(_sse_delta("y" * (64 * 1024 - 40)) * 16)
        for _ in range(FLOOD_TOTAL // len(block) + 1):
            yield block
        if mode == "sse-endless-deltas":
            yield _chunk(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n')
            yield _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self.thread.join(timeout=30)


_CHILD = """
import asyncio, json, sys, lmlink
url, kind, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {"max_response_bytes": cap} if cap else {}
options.update(endpoint=url, model="m", max_retries=0, timeout=lmlink.Timeout(connect=5, idle=30))

async def call_async():
    async with lmlink.AsyncClient(**options) as client:
        if kind == "async-stream":
            await client.chat_stream("hi")
        else:
            await client.chat("hi")

error = None
try:
    if kind.startswith("async"):
        asyncio.run(call_async())
    else:
        client = lmlink.Client(**options)
        client.chat_stream("hi") if kind == "stream" else client.chat("hi")
except lmlink.LMLinkError as exc:
    error = exc
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({
    "error": type(error).__name__ if error else None,
    "too_large": isinstance(error, lmlink.ResponseTooLargeError),
    "hwm_mib": hwm / 1024,
}))
"""


def _measure(url: str, kind: str, cap: int) -> dict[str, Any]:
    """Run one call in a child process; its error and peak RSS."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, url, kind, str(cap)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _case(mode: str, kind: str, cap: int, peak: int) -> Any:
    return pytest.param(mode, kind, cap, peak, id=f"{mode}-{kind}-cap{cap >> 20}MiB")


@pytest.mark.parametrize(
    ("mode", "kind", "cap", "peak_mib"),
    [
        _case("json-flood", "plain", MiB, 60),
        _case("json-flood", "async-plain", MiB, 60),
        _case("json-flood", "plain", 0, 200),  # the default cap, 64 MiB
        _case("declared-2gb", "plain", MiB, 60),
        _case("declared-2gb", "async-plain", MiB, 60),
        _case("sse-endless-line", "stream", MiB, 60),
        _case("sse-endless-line", "async-stream", MiB, 60),
        _case("gzip-bomb", "plain", MiB, 60),
        _case("gzip-bomb", "async-plain", MiB, 60),
        _case("sse-gzip-bomb", "stream", MiB, 60),
        _case("sse-endless-deltas", "stream", 4 * MiB, 60),
        _case("sse-endless-deltas", "async-stream", 4 * MiB, 60),
    ],
)
def test_huge_response_is_a_typed_error_with_bounded_memory(
    mode: str, kind: str, cap: int, peak_mib: int
) -> None:
    """A server offering 300 MB (or declaring 2 GB) gives ResponseTooLargeError, and the
    client's peak RSS stays far below what was offered."""
    flood = FloodServer(mode)
    try:
        result = _measure(flood.url, kind, cap)
    finally:
        flood.close()
    print(f"\n{mode}: {result}, server sent {flood.sent / MiB:.0f} MiB")
    assert result["too_large"], result
    assert result["hwm_mib"] < peak_mib, result


# -- writing outside the output file ---------------------------------------------------------------

ABSURD_IDS = [
    "../../etc/x",
    "../../../../../../tmp/lmlink-escape",
    "/etc/passwd",
    "..",
    ".",
    "a/b/c",
    "C:\\Windows\\evil",
    "~/.bashrc",
    "%2e%2e%2fx",
    "line\nbreak",
    "nul\x00byte",
    "\u202eevil\u202c",
    "x" * 10000,
    "out.jsonl",
    "cache.sqlite",
    " padded ",
]


def _answer_with_paths(request: RecordedRequest) -> Reply:
    """Answers full of path-like text, a path-like model name, and some failures."""
    prompt = request.json["messages"][-1]["content"]
    if prompt.endswith("3"):
        return Reply.error(400, "../../etc/shadow")
    return Reply(content="../../../etc/passwd\n/tmp/x", model="../../models/evil")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_absurd_ids_and_answers_stay_inside_the_output(tmp_path: Path) -> None:
    """Ids like ``../../etc/x`` and answers full of paths only ever appear inside the JSONL
    output: the run creates nothing but the output and the cache, wherever it runs from."""
    inbox, outbox, cwd = tmp_path / "in", tmp_path / "out", tmp_path / "cwd"
    for folder in (inbox, outbox, cwd):
        folder.mkdir()
    rows = [{"id": ident, "prompt": f"question {i}"} for i, ident in enumerate(ABSURD_IDS)]
    src = write_jsonl(inbox / "input.jsonl", rows)
    out = outbox / "out.jsonl"
    escape = Path("/tmp/lmlink-escape")
    existed = escape.exists()
    with FakeServer(responder=_answer_with_paths) as server:
        args = ["batch", str(src), "-o", str(out), "--cache", str(outbox / "cache.sqlite")]
        args += ["-e", server.url, "-m", "fake-model", "--progress", "off"]
        first = run_cli(args, cwd=cwd)
        again = run_cli([*args, "--retry-errors"], cwd=cwd)  # rewrites the output file
    assert first.returncode == 3, first.stderr  # a finished run with error lines
    assert again.returncode == 3, again.stderr
    lines = read_jsonl(out)
    assert sorted(line["id"] for line in lines) == sorted(ABSURD_IDS)
    assert _tree(cwd) == set()
    assert _tree(inbox) == {"input.jsonl"}
    assert _tree(outbox) <= {"out.jsonl", "cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm"}
    assert escape.exists() == existed
    assert not Path("/etc/x").exists()
