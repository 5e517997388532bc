""":class:`FakeServer`: a real HTTP server on 127.0.0.1 that behaves like a local LLM server.

The asyncio loop runs in a daemon thread, so tests (sync or async) talk to it over real
sockets while the test thread configures it. Everything the loop thread touches per request is
either only written by that thread (stats, sequence numbers) or a single atomic operation
(deque append/popleft, attribute reads), so the hot path takes no locks.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeAlias

from ._embeddings import EmbedSettings, render_embeddings
from ._http import Connection, RecordedRequest, Stats
from ._personas import PERSONAS, Persona
from ._render import Plan, json_plan, render_chat
from ._replies import Faults, Reply, format_seconds
from ._tokenize import serve_tokens, window_fields

__all__ = ["FakeServer", "Responder"]

#: ``srv.responder``: called (in the server thread) for chat requests when the queue is empty.
#: Return a Reply, a str (the content) or None (use ``srv.default``).
Responder: TypeAlias = Callable[[RecordedRequest], Reply | str | None]

_CHAT = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS = frozenset({"/v1/models", "/models"})
_EMBED = frozenset({"/v1/embeddings", "/embeddings"})
_HEALTH = frozenset({"/health", "/v1/health"})
_ROOT_TEXT = b"lmlink test server is running\n"


def _error(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class FakeServer:
    """A fake OpenAI-compatible server for tests, demos and soak runs.

    ``POST /v1/chat/completions`` (also ``/chat/completions``) answers with the next queued
    :class:`Reply`, else ``responder(request)``, else ``default`` (a canned answer), in stream
    mode when the request says ``"stream": true``. ``GET /v1/models`` lists ``models``,
    ``GET /health`` says ``{"status":"ok"}``, ``POST /v1/embeddings`` answers deterministic
    vectors (see ``embed``), anything else is a 404 JSON error.

    Example::

        with FakeServer(model="fake-model") as srv:
            srv.enqueue(Reply(content="Hello"), Reply.error(503, retry_after=1))
            srv.responder = lambda req: req.json["messages"][-1]["content"].upper()
            client = SomeClient(base_url=srv.url)        # http://127.0.0.1:PORT/v1
            ...
            assert srv.requests[0].json["model"] == "fake-model"
            assert srv.stats.streams_completed == 1

    Args:
        model: the model name reported in answers and listed by ``/v1/models``.
        host, port: where to listen; port 0 picks a free port, kept across restarts.
        models: the ids ``/v1/models`` lists (default ``[model]``).
        responder, default, faults, api_key: see the attributes of the same names.
        keep_requests: how many recent requests ``requests`` keeps (None: all of them; a soak
            run of 200 000 requests is better off with the default).

    Attributes (all settable while the server runs):
        responder: see :data:`Responder`.
        default: the Reply used when the queue is empty and no responder answered.
        faults: a :class:`Faults` that injects random failures, or None.
        api_key: when set, chat and models routes want ``Authorization: Bearer <key>``
            (401 otherwise), like vLLM/llama.cpp started with ``--api-key``.
        owned_by: the ``owned_by`` of ``/v1/models`` entries.
        embed: an :class:`EmbedSettings`, how ``/v1/embeddings`` answers (order, usage,
            models that embed, an input that fails). :meth:`enqueue_embeddings` queues
            replies (errors, stalls, delays) for it; ``faults`` apply to it as to chat.
        errors: exceptions raised inside the server (e.g. by the responder); each one also
            produced a 500 response. A test can ``assert not srv.errors``.
        context_length: the model's window, reported where the persona's server reports it
            (None: not reported); the persona's tokenizer routes are in ``_tokenize``.
    """

    def __init__(
        self,
        model: str = "fake-model",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] | None = None,
        responder: Responder | None = None,
        default: Reply | None = None,
        faults: Faults | None = None,
        api_key: str | None = None,
        keep_requests: int | None = 10_000,
        persona: str | None = None,
    ) -> None:
        self.model = model
        #: The real server this one imitates where servers differ (see ``PERSONAS``).
        if persona is not None and persona not in PERSONAS:
            raise ValueError(f"unknown persona {persona!r}; one of: {', '.join(PERSONAS)}")
        self.persona: Persona | None = PERSONAS[persona] if persona is not None else None
        self.host = host
        self.models: list[str] = list(models) if models is not None else [model]
        self.responder = responder
        self.default = default if default is not None else Reply()
        self.faults = faults
        self.api_key = api_key
        self.owned_by = "lmlink"
        if self.persona is not None:
            self.owned_by = self.persona.owned_by or ""
        self.loading_retry_after: float | None = None
        self.embed = EmbedSettings()
        self._embed_queue: collections.deque[Reply] = collections.deque()
        self.context_length: int | None = 4096
        self.errors: list[BaseException] = []
        #: The counters the server thread updates; prefer the ``stats`` snapshot in tests.
        self.live_stats = Stats()
        self._port = port
        self._queue: collections.deque[Reply | str] = collections.deque()
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=keep_requests)
        self._lock = threading.Lock()
        self._loading_until = 0.0
        self._seq = 0
        self._created = int(time.time())
        self._conns: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Bind and serve in a background thread; returns self. Rebinds the same port after
        :meth:`stop`, so a client sees the server die and come back.

        Example: ``srv = FakeServer().start(); ...; srv.stop()``
        """
        if self._thread is not None:
            raise RuntimeError("FakeServer is already running")
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(loop, ready), name="lmlink-fake-server", daemon=True
        )
        thread.start()
        try:
            self._port = ready.result(timeout=30)
        except BaseException:
            thread.join(timeout=30)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Close the listener and drop every connection (abruptly, like a crash); idempotent.

        Example: ``srv.stop(); ...; srv.start()  # same port``
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            self._loop = self._thread = self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                loop.create_server(
                    lambda: Connection(self, loop),
                    self.host,
                    self._port,
                    reuse_address=True,
                    backlog=2048,
                )
            )
        except BaseException as exc:
            loop.close()
            ready.set_exception(exc)
            return
        self._server = server
        ready.set_result(server.sockets[0].getsockname()[1])
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _close_all(self) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        server = self._server
        if server is not None:
            # Stop accepting, but keep the server open until asyncio's own tasks have set
            # up the connections accepted already: one that runs after Server.close() fails
            # inside asyncio and its socket is never closed (a leak, a ResourceWarning).
            for sock in server.sockets:
                with contextlib.suppress(NotImplementedError):  # loops without readers
                    loop.remove_reader(sock.fileno())
        # Each connection is aborted once it registers, and a response task ends as soon as
        # its connection is gone; only what still runs after a few seconds is cancelled.
        deadline = loop.time() + 5.0
        while True:
            for conn in list(self._conns):
                conn.abort()
            others = {t for t in asyncio.all_tasks() if t is not me}
            if not others or loop.time() > deadline:
                break
            await asyncio.wait(others, timeout=0.05)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports run connection_lost

    # -- public API ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between start() and stop(). Example: ``assert srv.running``."""
        return self._thread is not None

    @property
    def port(self) -> int:
        """The bound port (0 before the first start). Example: ``srv.port``."""
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` without ``/v1``. Example: ``srv.origin + "/health"``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The base URL through ``/v1``, as clients expect it. Example: ``Client(srv.url)``."""
        return self.origin + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (a copy). Example: ``srv.requests[-1].json``."""
        with self._lock:
            return list(self._requests)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters. Example: ``assert srv.stats.requests == 3``."""
        return self.live_stats.snapshot()

    @property
    def pending(self) -> int:
        """How many queued replies are left. Example: ``assert srv.pending == 0``."""
        return len(self._queue)

    def enqueue(self, *replies: Reply | str) -> None:
        """Queue replies, first in first out, one per chat request (a str is the content).

        Example: ``srv.enqueue(Reply.error(503, retry_after=0.1), "second try works")``
        """
        self._queue.extend(replies)

    def enqueue_embeddings(self, *replies: Reply) -> None:
        """Queue replies for embeddings requests, one per request: a reply with a fault
        (an error status, a stall, a cut) is played as it is; any other answers with the
        vectors, after its ``delay``.

        Example: ``srv.enqueue_embeddings(Reply.error(503, retry_after=0.1), Reply())``
        """
        self._embed_queue.extend(replies)

    def reset(self) -> None:
        """Forget queued replies, recorded requests, errors and counters (not the settings).

        Example: ``srv.reset(); assert srv.stats.requests == 0``
        """
        self._queue.clear()
        self._embed_queue.clear()
        with self._lock:
            self._requests.clear()
        self.errors.clear()
        self.live_stats = Stats()

    def set_loading(self, seconds: float, retry_after: float | None = None) -> None:
        """Answer every chat request with llama.cpp's 503 "Loading model" for ``seconds``
        (``/v1/models`` keeps working); ``retry_after`` adds a Retry-After header like LocalAI.
        ``set_loading(0)`` ends it.

        Example: ``srv.set_loading(0.5, retry_after=0.1)``
        """
        self.loading_retry_after = retry_after
        self._loading_until = time.monotonic() + seconds

    @property
    def loading(self) -> bool:
        """True while :meth:`set_loading` is in effect. Example: ``assert not srv.loading``."""
        return time.monotonic() < self._loading_until

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``n`` requests (any route) arrived since the last reset; return them.

        Raises TimeoutError when they don't come in time.
        Example: ``req, = srv.wait_for_requests(1)``
        """
        try:
            self.wait_for(lambda: self.live_stats.requests >= n, timeout)
        except TimeoutError:
            got = self.live_stats.requests
            raise TimeoutError(f"expected {n} requests, got {got} within {timeout}s") from None
        return self.requests

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` is true (it is polled); returns True, or raises
        TimeoutError. Handy for effects that happen in the server thread after the client is
        done, like counting a disconnect.

        Example: ``srv.wait_for(lambda: srv.stats.client_disconnects == 1)``
        """
        deadline = time.monotonic() + timeout
        # Polling keeps the per-request path free of condition-variable traffic.
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(0.002)
        return True

    def __repr__(self) -> str:
        state = f"running on {self.url}" if self.running else "stopped"
        return f"<FakeServer model={self.model!r} {state}>"

    # -- loop-thread side (the Handler protocol of _http) -------------------------------------

    def opened(self, conn: Connection) -> None:
        """A client connected."""
        self._conns.add(conn)
        self.live_stats.connections_opened += 1

    def closed(self, conn: Connection) -> None:
        """A connection is gone."""
        self._conns.discard(conn)
        self.live_stats.connections_closed += 1

    def fail(self, exc: BaseException) -> Plan:
        """Record an exception raised while answering; the client gets a 500."""
        self.live_stats.server_errors += 1
        self.errors.append(exc)
        return json_plan(500, _error(500, f"{type(exc).__name__}: {exc}", "server_error"))

    def dispatch(self, request: RecordedRequest) -> Plan:
        """Route one request to its response."""
        self.live_stats.requests += 1
        with self._lock:
            self._requests.append(request)
        path = request.path.rstrip("/") or "/"
        method = request.method
        get = method in ("GET", "HEAD")
        if path in _CHAT:
            return self._chat(request) if method == "POST" else self._not_allowed(method, path)
        if path in _EMBED:
            return (
                self._embeddings(request) if method == "POST" else self._not_allowed(method, path)
            )
        if path in _MODELS or path.startswith(("/v1/models/", "/models/")):
            if not get:
                return self._not_allowed(method, path)
            return self._unauthorized(request) or self._models(path)
        if path in _HEALTH and get:
            return self._loading_plan() if self.loading else json_plan(200, {"status": "ok"})
        if path == "/" and get:
            root = self.persona.root_text if self.persona is not None else _ROOT_TEXT
            if root is not None:
                headers = [("Content-Type", "text/plain; charset=utf-8"), *self._persona_headers()]
                return Plan(headers=headers, body=root)
        tokens = serve_tokens(self, request, path)
        if tokens is not None:
            return self._unauthorized(request) or tokens
        # llama.cpp's answer to unknown routes.
        return json_plan(
            404, {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
        )

    def _not_allowed(self, method: str, path: str) -> Plan:
        msg = f"Method {method} not allowed for {path}"
        return json_plan(405, _error(405, msg, "invalid_request_error"))

    def _unauthorized(self, request: RecordedRequest) -> Plan | None:
        key = self.api_key
        if key is None:
            return None
        auth = request.headers.get("authorization", "")
        if auth == f"Bearer {key}" or request.headers.get("x-api-key") == key:
            return None
        return json_plan(401, _error(401, "Invalid API Key", "authentication_error"))

    def _persona_headers(self) -> list[tuple[str, str]]:
        return list(self.persona.headers) if self.persona is not None else []

    def _models(self, path: str) -> Plan:
        entries: list[dict[str, Any]] = []
        persona = self.persona
        for m in self.models:
            entry: dict[str, Any] = {"id": m, "object": "model", "created": self._created}
            if persona is None or persona.owned_by is not None:
                entry["owned_by"] = self.owned_by
            elif persona.name == "tgi":
                entry.update(created=0, owned_by=m)
            if persona is not None:
                entry.update(persona.models_extra)
                window_fields(entry, persona.name, self.context_length)
            entries.append(entry)
        if path in _MODELS:
            listing: dict[str, Any] = {"object": "list", "data": entries}
            if persona is not None and persona.name == "llamacpp":
                listing = {"models": [{"name": m, "model": m} for m in self.models], **listing}
            return json_plan(200, listing, dict(self._persona_headers()))
        wanted = path.split("/models/", 1)[1]
        for entry in entries:
            if entry["id"] == wanted:
                return json_plan(200, entry)
        msg = f"The model `{wanted}` does not exist."
        return json_plan(404, _error(404, msg, "not_found_error"))

    def _loading_plan(self) -> Plan:
        body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        extra = {}
        if self.loading_retry_after is not None:
            extra["Retry-After"] = format_seconds(self.loading_retry_after)
        return json_plan(503, body, extra)

    def _chat(self, request: RecordedRequest) -> Plan:
        if self.loading:
            return self._loading_plan()
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        body = request.json
        if not isinstance(body, dict):
            msg = "Invalid JSON in request body: expected a JSON object"
            return json_plan(400, _error(400, msg, "invalid_request_error"))
        if self.persona is not None:
            rejected = self.persona.reject(body)
            if rejected is not None:
                return Plan(
                    status=rejected.status,
                    headers=[("Content-Type", rejected.content_type)],
                    body=rejected.body,
                )
        stats = self.live_stats
        stats.chat_requests += 1
        reply = self._next_reply(request)
        faults = self.faults
        if faults is not None and not reply.has_fault:
            reply, kind = faults.apply(reply, body.get("stream") is True)
            if kind is not None:
                stats.faults[kind] = stats.faults.get(kind, 0) + 1
        self._seq += 1
        return render_chat(reply, body, model=self.model, seq=self._seq, created=int(time.time()))

    def _embeddings(self, request: RecordedRequest) -> Plan:
        if self.loading:
            return self._loading_plan()
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        reply = self._embed_queue.popleft() if self._embed_queue else Reply()
        faults = self.faults
        if faults is not None and not reply.has_fault:
            reply, kind = faults.apply(reply, False)
            if kind is not None:
                self.live_stats.faults[kind] = self.live_stats.faults.get(kind, 0) + 1
        self._seq += 1
        if reply.has_fault:
            return render_chat(reply, {}, model=self.model, seq=self._seq, created=0)
        plan = render_embeddings(request.json, self.embed, model=self.model)
        plan.wait += reply.delay
        return plan

    def _next_reply(self, request: RecordedRequest) -> Reply:
        item: Reply | str | None
        try:
            item = self._queue.popleft()
        except IndexError:
            item = None
            if self.responder is not None:
                item = self.responder(request)
        if item is None:
            return self.default
        return Reply(content=item) if isinstance(item, str) else item
