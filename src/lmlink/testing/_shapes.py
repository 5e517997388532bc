"""Server shapes: how a real LLM server's speed depends on the requests it holds at once.

A :class:`ServerShape` is the few numbers that decide a server's throughput and latency under
load: ``slots`` sequences decoded together (vLLM and SGLang batch hundreds, llama-server
``--parallel N`` holds N, Ollama two or four), each decode ``step`` costing ``step_s`` plus
``per_seq_s`` for every sequence in the batch (continuous batching is cheap per added
sequence, not free), ``steps`` steps per request on average (its output tokens, ``spread``
either way), and at most ``queue_limit`` requests waiting for a slot before new ones get a
503 (Ollama's ``OLLAMA_MAX_QUEUE``). :data:`SHAPES` holds three typical ones.

The same shape runs two ways:

- :class:`ShapeModel`: a pure discrete-time model (no clock, no I/O). :func:`simulate`
  drives it with a closed-loop client through a concurrency limiter, so limiter tests run
  a minute of a server in milliseconds;
- :class:`ShapeServer`: a real HTTP server on 127.0.0.1 (its own thread and event loop) that
  answers ``/v1/chat/completions`` on the model's schedule, for benchmarks of the batch
  runner end to end.

Like the rest of :mod:`lmlink.testing` it imports nothing from lmlink.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["SHAPES", "ServerShape", "ShapeModel", "ShapeServer", "SimResult", "simulate"]


@dataclass(frozen=True, slots=True)
class ServerShape:
    """How a server's step time and capacity depend on load.

    >>> ServerShape("llama-server --parallel 4", slots=4, step_s=0.005).capacity
    50.0
    """

    name: str
    slots: int
    step_s: float
    per_seq_s: float = 0.0
    steps: int = 16
    queue_limit: int | None = None
    spread: float = 0.25

    def draw_steps(self, rng: random.Random) -> int:
        """The steps of one request: ``steps`` on average, ``spread`` either way (answers
        differ in length, which also keeps requests from moving in lockstep)."""
        low = max(1, round(self.steps * (1 - self.spread)))
        return rng.randint(low, 2 * self.steps - low)

    def step_time(self, active: int) -> float:
        """Seconds one decode step takes with ``active`` sequences in the batch."""
        return self.step_s + self.per_seq_s * active

    def rate(self, in_flight: int) -> float:
        """Steady-state requests/s with ``in_flight`` requests kept in flight."""
        active = min(max(in_flight, 0), self.slots)
        return active / (self.steps * self.step_time(active)) if active else 0.0

    def latency(self, in_flight: int) -> float:
        """Steady-state seconds per request with ``in_flight`` kept in flight (Little's law)."""
        return in_flight / self.rate(in_flight) if in_flight > 0 else 0.0

    @property
    def capacity(self) -> float:
        """The most requests/s this server can do (all slots busy)."""
        return self.rate(self.slots)


#: Three typical shapes: a continuous-batching server, a few fixed slots, a small queue.
SHAPES: dict[str, ServerShape] = {
    "batching": ServerShape(
        "continuous batching to 256, 8 ms + 0.1 ms/sequence per step",
        slots=256,
        step_s=0.008,
        per_seq_s=0.0001,
    ),
    "slots": ServerShape("4 slots, flat 5 ms steps", slots=4, step_s=0.005),
    "queue": ServerShape("2 slots, 8.5 ms steps, 503 past 8 waiting", 2, 0.0085, queue_limit=8),
}


class ShapeModel:
    """The server of a :class:`ServerShape` in discrete time, pure.

    Requests :meth:`submit`-ted wait for a slot; a step admits waiting requests into free
    slots, lasts :meth:`ServerShape.step_time` of the batch, and advances every admitted
    request by one step. Time only moves in :meth:`step` (or :meth:`idle_until`).

    >>> model = ShapeModel(SHAPES["slots"])
    >>> model.submit("a")
    True
    >>> model.step()                    # (time at the end of the step, finished ids)
    (0.005, [])
    """

    def __init__(self, shape: ServerShape, now: float = 0.0, *, seed: int = 0) -> None:
        self.shape = shape
        self.now = now
        self._rng = random.Random(seed)
        self.waiting: collections.deque[Any] = collections.deque()
        self.active: dict[Any, int] = {}  # request -> steps left
        self.rejected = 0

    def submit(self, request: Any) -> bool:
        """Queue ``request``; False when the queue is full (the server's 503)."""
        free = self.shape.slots - len(self.active)
        limit = self.shape.queue_limit
        if limit is not None and len(self.waiting) >= limit + max(free, 0):
            self.rejected += 1
            return False
        self.waiting.append(request)
        return True

    @property
    def busy(self) -> bool:
        """True when a request is waiting or being decoded."""
        return bool(self.active or self.waiting)

    def idle_until(self, when: float) -> None:
        """Let time pass with nothing to do."""
        self.now = max(self.now, when)

    def step(self) -> tuple[float, list[Any]]:
        """Run one decode step; return the time it ended and the requests it finished."""
        while self.waiting and len(self.active) < self.shape.slots:
            self.active[self.waiting.popleft()] = self.shape.draw_steps(self._rng)
        if not self.active:
            return self.now, []
        self.now += self.shape.step_time(len(self.active))
        finished = []
        for request, left in list(self.active.items()):
            if left <= 1:
                del self.active[request]
                finished.append(request)
            else:
                self.active[request] = left - 1
        return self.now, finished


class Limiter(Protocol):
    """What :func:`simulate` needs of a limiter (the batch runner's has this shape)."""

    limit: int

    def try_start(self, now: float) -> Any: ...

    def finish(self, ticket: Any, outcome: Any, now: float) -> None: ...


@dataclass(slots=True)
class SimResult:
    """What a simulated run did: ``rate`` requests/s over the run, latency percentiles
    over the finished requests, 503s, and the limit after each finished request."""

    done: int
    elapsed_s: float
    latencies: list[float]
    rejected: int
    limits: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Finished requests per second of the run."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_p(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the latencies (nearest rank)."""
        ordered = sorted(self.latencies)
        rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
        return ordered[rank]


def simulate(
    shape: ServerShape | ShapeModel,
    limiter: Limiter,
    *,
    requests: int | None = None,
    seconds: float | None = None,
    ok: Any = "ok",
    overload: Any = "overload",
    on_step: Callable[[ShapeModel], None] | None = None,
) -> SimResult:
    """Drive ``shape`` with a client that keeps as many requests in flight as ``limiter``
    allows, until ``requests`` have finished or ``seconds`` have passed.

    ``ok`` and ``overload`` are the outcome values handed to ``limiter.finish`` (a request
    refused by a full queue is an overload, and is sent again). ``on_step`` is called
    after every step, to change the server mid-run (another client arrives, say).

    >>> from lmlink.batch import AdaptiveLimiter, Outcome
    >>> result = simulate(SHAPES["slots"], AdaptiveLimiter(), requests=2000,
    ...                   ok=Outcome.OK, overload=Outcome.OVERLOAD)
    >>> round(result.rate)
    49
    """
    if requests is None and seconds is None:
        raise ValueError("give requests= or seconds=")
    model = shape if isinstance(shape, ShapeModel) else ShapeModel(shape)
    start = model.now
    tickets: dict[int, tuple[Any, float]] = {}
    result = SimResult(0, 0.0, [], 0)
    issued = 0  # new requests sent
    retries = 0  # requests refused by a full queue, to be sent again
    next_id = 0

    def more() -> bool:
        left = requests is None or issued < requests
        return left and (seconds is None or model.now - start < seconds)

    while True:  # bounded: every pass runs a step or moves time forward
        while retries or more():
            ticket = limiter.try_start(model.now)
            if ticket is None:
                break
            rid, next_id = next_id, next_id + 1
            if retries:
                retries -= 1
            else:
                issued += 1
            if not model.submit(rid):
                result.rejected += 1
                retries += 1
                limiter.finish(ticket, overload, model.now)
                break  # sent again after the next step, not in a tight loop
            tickets[rid] = (ticket, model.now)
        if not model.busy:
            if not (retries or more()):
                break
            wait = getattr(limiter, "wait_s", None)
            model.idle_until(model.now + max(wait(model.now) if wait else 0.0, 0.001))
            continue
        now, finished = model.step()
        for rid in finished:
            ticket, started = tickets.pop(rid)
            limiter.finish(ticket, ok, now)
            result.done += 1
            result.latencies.append(now - started)
            result.limits.append(limiter.limit)
        if on_step is not None:
            on_step(model)
    result.elapsed_s = model.now - start
    return result


# -- the HTTP server -----------------------------------------------------------------------


class ShapeServer:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 that answers on a shape's schedule.

    ``POST /v1/chat/completions`` answers (plain JSON, or one SSE event stream when the
    request streams) once its request has had ``shape.steps`` decode steps; a full queue
    answers 503. ``GET /v1/models`` lists ``model``. ``shape`` may be replaced while it runs.

    >>> with ShapeServer(SHAPES["queue"]) as srv:
    ...     ...  # point a client at srv.url
    """

    def __init__(self, shape: ServerShape, *, model: str = "fake-model", port: int = 0) -> None:
        self.shape = shape
        self.model = model
        self.served = 0
        self.rejected = 0
        self._rng = random.Random(0)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> ShapeServer:
        """Listen and serve in a daemon thread; returns once it accepts connections."""
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        self._port = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving; idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None:
            loop.call_soon_threadsafe(stop.set)
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> ShapeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start(), which is waiting
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        self._stop = asyncio.Event()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._active: dict[asyncio.Future[None], int] = {}
        self._wake = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", self._port, backlog=4096)
        stepper = asyncio.ensure_future(self._stepper())
        ready.set_result(server.sockets[0].getsockname()[1])
        async with server:
            await self._stop.wait()
        stepper.cancel()

    async def _stepper(self) -> None:
        """The decode loop: admit, sleep one step, advance, wake the finished."""
        while True:  # runs until the server stops
            while self._waiting and len(self._active) < self.shape.slots:
                self._active[self._waiting.popleft()] = self.shape.draw_steps(self._rng)
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self.shape.step_time(len(self._active)))
            for fut, left in list(self._active.items()):
                if left <= 1:
                    del self._active[fut]
                    if not fut.done():
                        fut.set_result(None)
                else:
                    self._active[fut] = left - 1

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # one request per pass, until the client closes the connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                status, payload, ctype = await self._answer(method, path, body)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode("latin-1")
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[str, bytes, str]:
        js = "application/json"
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            return "200 OK", json.dumps(data).encode(), js
        if method != "POST" or not path.endswith("/chat/completions"):
            return "404 Not Found", b'{"error":{"message":"not found","code":404}}', js
        request = json.loads(body or b"{}")
        limit = self.shape.queue_limit
        free = self.shape.slots - len(self._active)
        if limit is not None and len(self._waiting) >= limit + max(free, 0):
            self.rejected += 1
            return "503 Service Unavailable", b'{"error":{"message":"server busy","code":503}}', js
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self._wake.set()
        await done
        self.served += 1
        steps = self.shape.steps
        text = "ok " * steps
        usage = {"prompt_tokens": 8, "completion_tokens": steps, "total_tokens": 8 + steps}
        if request.get("stream"):
            delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
            events = [json.dumps({"object": "chat.completion.chunk", **c}) for c in (delta, end)]
            payload = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"
            return "200 OK", payload.encode(), "text/event-stream"
        message = {"role": "assistant", "content": text}
        answer = {
            "id": f"shape-{self.served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        return "200 OK", json.dumps(answer).encode(), js
