"""Several servers behind one queue: each endpoint has its own client, its own limit and its
own health, and every request goes to a live endpoint with room for it.

- A request waits for a free slot on any live endpoint and takes the one with the most room
  (a faster server frees its slots sooner, so it does more of the work).
- An endpoint that refuses connections, or fails :data:`STRIKES` times in a row with a 5xx,
  a timeout or a broken connection, is taken out; the request that failed there is sent
  again elsewhere, so it gets no error line for a server's trouble. A background probe
  (``GET /models``) asks it again after a growing pause and lets it rejoin with a fresh limit.
- The last live endpoint is taken out only when it is unreachable; then the unreachable
  error is raised, as a run on one server raises it today.

With one endpoint every failure is what it always was: per item, overload or fatal
(:mod:`._outcome`). The limit of each endpoint comes from :func:`new_limiter`.

:meth:`EndpointPool.ask` is one item's I/O loop (take a slot, call the client, give the slot
back); what follows a failure (the pool's own 429/503 retries, the item's deadline, moving to
another endpoint) is decided by :class:`._attempts.ItemAttempts`, on the same retry policy
and backoff as the client's own retries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from lmlink import AsyncClient
from lmlink._config import RetryPolicy
from lmlink._errors import (
    APIConnectionError,
    APIStatusError,
    ConfigurationError,
    LMLinkError,
    ModelLoadingError,
)
from lmlink._log import log

from ._attempts import OWN_RETRY, ItemAttempts, Next, client_policy, pause_for, unreachable
from ._limiter import AUTO_CEILING, AdaptiveLimiter, Outcome, Ticket
from ._outcome import is_overload
from ._progress import EndpointShare

__all__ = [
    "OWN_RETRY",
    "STRIKES",
    "Endpoint",
    "EndpointPool",
    "client_policy",
    "endpoint_list",
    "new_limiter",
    "unreachable",
]

#: Failures in a row (5xx, timeouts, broken connections) that take an endpoint out.
STRIKES = 3
_PROBE_FIRST = 1.0
_PROBE_MAX = 30.0


def new_limiter(ceiling: int | None) -> AdaptiveLimiter:
    """The adaptive limit on requests in flight to one endpoint: ``None`` starts low and
    ramps up to the limiter's own ceiling; a number given by hand is where it starts and
    the most it may reach (as in the runner)."""
    if ceiling is None:
        return AdaptiveLimiter(AUTO_CEILING, initial=1, now=time.monotonic())
    return AdaptiveLimiter(ceiling, initial=ceiling, now=time.monotonic())


def _strike(exc: LMLinkError) -> bool:
    """True for failures that say something about the server rather than the request."""
    if isinstance(exc, ModelLoadingError):
        return False
    if isinstance(exc, APIConnectionError):  # timeouts and cut streams included
        return True
    return isinstance(exc, APIStatusError) and exc.status_code >= 500


class Endpoint:
    """One server of the pool: its client, its limit, its health and its share of the work."""

    def __init__(self, client: AsyncClient, ceiling: int | None) -> None:
        self.client = client
        self.url = client.endpoint or "(discovered)"
        self.ceiling = ceiling
        self.limiter = new_limiter(ceiling)
        self.up = True
        self.since = time.monotonic()  # for the rate
        self.ok = 0
        self.failed = 0
        self.moved = 0  # requests that failed here and were sent elsewhere
        self.strikes = 0
        self.downs = 0
        self.last_error = ""
        self.pause = _PROBE_FIRST

    @property
    def state(self) -> str:
        """``"up"`` or ``"down"``."""
        return "up" if self.up else "down"

    def try_start(self) -> Ticket | None:
        """A limiter ticket, or None when this endpoint is at its limit (or paused)."""
        return self.limiter.try_start(time.monotonic())

    def room(self) -> float:
        """The share of this endpoint's limit that is free (0 when it is out, full or
        paused by a Retry-After)."""
        lim = self.limiter
        if not self.up or lim.in_flight >= lim.limit or lim.wait_s(time.monotonic()) > 0:
            return 0.0
        return (lim.limit - lim.in_flight) / lim.limit

    def share(self, total_ok: int, now: float) -> EndpointShare:
        """This endpoint's part of the run so far."""
        elapsed = now - self.since
        return EndpointShare(
            url=self.url,
            state=self.state,
            ok=self.ok,
            failed=self.failed,
            share=self.ok / total_ok if total_ok else 0.0,
            items_s=self.ok / elapsed if elapsed > 0 else 0.0,
            limit=self.limiter.limit,
            in_flight=self.limiter.in_flight,
        )

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, {self.state}, ok={self.ok}, limit={self.limiter.limit})"


class EndpointPool:
    """Requests over several endpoints; :meth:`ask` is one item's answer or its error.

    >>> pool = EndpointPool([AsyncClient(endpoint=a), AsyncClient(endpoint=b)])
    >>> resp = await pool.ask(messages, model="m", params={})
    >>> [(e.url, e.ok, e.state) for e in pool.endpoints]
    """

    def __init__(
        self,
        clients: Sequence[AsyncClient],
        *,
        ceiling: int | None = None,
        retry: RetryPolicy | None = None,
        retry_here: bool = True,
        total: float | None = None,
        on_change: Callable[[Endpoint], None] | None = None,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        if not clients:
            raise ValueError("an EndpointPool needs at least one client")
        self.endpoints = [Endpoint(c, ceiling) for c in clients]
        self._retry = retry or RetryPolicy()
        self._retry_here = retry_here
        self._total = total
        self._on_change = on_change
        #: Called after every request ends (a grown limit may want more workers).
        self.on_release = on_release
        # Each waiting request has a future; a release wakes as many as there are free
        # slots, not all of them (with hundreds waiting, waking all costs more than the work).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._probes: dict[int, asyncio.Task[None]] = {}
        self._fatal: LMLinkError | None = None

    @property
    def in_flight(self) -> int:
        """Requests in flight over every endpoint."""
        return sum(e.limiter.in_flight for e in self.endpoints)

    @property
    def limit(self) -> int:
        """The sum of the live endpoints' limits."""
        return sum(e.limiter.limit for e in self.endpoints if e.up)

    @property
    def ceiling(self) -> int:
        """The sum of the endpoints' ceilings."""
        return sum(e.limiter.ceiling for e in self.endpoints)

    def shares(self) -> tuple[EndpointShare, ...]:
        """Each endpoint's part of the run so far."""
        total = sum(e.ok for e in self.endpoints)
        now = time.monotonic()
        return tuple(e.share(total, now) for e in self.endpoints)

    # -- slots ---------------------------------------------------------------------------

    async def acquire(self, deadline: float | None = None) -> tuple[Endpoint, Ticket] | None:
        """A live endpoint with room and its limiter ticket, or None once ``deadline``
        passes; raises once no endpoint is left."""
        loop = asyncio.get_running_loop()
        while True:  # bounded: releases and changes of state wake the waiters, pauses end
            if self._fatal is not None:
                raise self._fatal
            endpoints = self.endpoints
            # One endpoint (the common case): its limiter alone decides, and says no when
            # it is full or paused.
            best = endpoints[0] if len(endpoints) == 1 else max(endpoints, key=Endpoint.room)
            if best.up:
                ticket = best.try_start()
                if ticket is not None:
                    return best, ticket
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                return None
            pauses = [e.limiter.wait_s(now) for e in self.endpoints if e.up]
            wait = min(pauses) if pauses and min(pauses) > 0 else None  # all in a Retry-After
            if left is not None:
                wait = left if wait is None else min(wait, left)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                if wait is None:
                    await waiter
                else:
                    await asyncio.wait([waiter], timeout=wait)
            finally:
                if not waiter.done():
                    waiter.cancel()

    def release(
        self, endpoint: Endpoint, ticket: Ticket, outcome: Outcome, error: LMLinkError | None
    ) -> None:
        """Give the slot back, telling its limiter how the request ended. A Retry-After
        holds back that endpoint's new requests as long as a retry would wait, and never
        longer than an item may take in all."""
        after = pause_for(error, self._retry, self._total)
        endpoint.limiter.finish(ticket, outcome, time.monotonic(), retry_after=after)
        if self._waiters:
            self._wake(sum(max(0, e.limiter.limit - e.limiter.in_flight) for e in self.endpoints))
        if self.on_release is not None:
            self.on_release()

    def _wake(self, count: int | None = None) -> None:
        """Wake ``count`` waiting requests (all of them for None)."""
        waiters = self._waiters
        while waiters and (count is None or count > 0):
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if count is not None:
                    count -= 1

    # -- one item ------------------------------------------------------------------------

    async def ask(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any],
        stream: bool = False,
        fatal: Callable[[LMLinkError], bool] = lambda exc: False,
        label: str = "",
        send: Callable[[AsyncClient, dict[str, Any]], Awaitable[Any]] | None = None,
    ) -> Any:
        """The answer to ``messages``, or the error the item keeps; raises the errors every
        item would share (``fatal(exc)``, or no endpoint left). With a ``total`` timeout,
        the item's attempts and the waits between them end by one deadline, set by its
        first attempt (what follows each failure: :class:`._attempts.ItemAttempts`).
        ``label`` names the item in the log. ``send(client, options)``, when given, is the
        call to make instead of a chat (``client.embed(..., **options)``, say): it gets the
        same slots, retries, deadline and failover; ``options`` holds the ``timeout=`` left
        to the item."""
        run = ItemAttempts(
            self._retry, self._total, endpoints=len(self.endpoints), retry_here=self._retry_here
        )
        while True:  # bounded: moves, the retry budget, the deadline, endpoints going out
            got = await self.acquire(run.deadline)
            if got is None:  # the deadline passed while the item waited for a slot
                return run.expired()
            endpoint, ticket = got
            left = run.begin()
            outcome = Outcome.NEUTRAL
            error: LMLinkError | None = None
            try:
                if left is not None and left <= 0:
                    raise run.expired()
                client = endpoint.client
                timeout = run.timeout_for(client.timeout, left)
                kwargs = params if timeout is None else {**params, "timeout": timeout}
                if send is not None:
                    resp = await send(client, kwargs)
                elif stream:
                    resp = await client.chat_stream(messages, model=model, **kwargs)
                else:
                    resp = await client.chat(messages, model=model, **kwargs)
                outcome = Outcome.OK
                endpoint.ok += 1
                endpoint.strikes = 0
                return resp
            except LMLinkError as exc:
                error = exc
                if is_overload(exc):
                    outcome = Outcome.OVERLOAD
            finally:
                self.release(endpoint, ticket, outcome, error)
            assert error is not None
            judge = functools.partial(self._elsewhere, endpoint)
            step = run.after(error, moved=judge, fatal=fatal(error))
            if step is Next.MOVE:
                endpoint.moved += 1
                continue
            if step is Next.RAISE:
                raise error
            if step is Next.KEEP:
                endpoint.failed += 1
                return run.kept(error)
            log.info(
                "lmlink: batch item %s: retry in %.2f s after: %s",
                label,
                run.delay,
                endpoint.client.redact(str(error)),
            )
            await asyncio.sleep(run.delay)

    def _elsewhere(self, endpoint: Endpoint, error: LMLinkError) -> bool:
        """Count ``error`` against ``endpoint``; True if the item should go to another one.
        Raises when the last endpoint became unreachable."""
        if len(self.endpoints) == 1:
            return False
        if unreachable(error):
            self._take_out(endpoint, error)
            return True
        if not _strike(error):
            return False
        endpoint.strikes += 1
        if endpoint.strikes >= STRIKES and sum(e.up for e in self.endpoints) > 1:
            self._take_out(endpoint, error)
        return any(e.up and e is not endpoint for e in self.endpoints) or not endpoint.up

    # -- health --------------------------------------------------------------------------

    def _take_out(self, endpoint: Endpoint, error: LMLinkError) -> None:
        if not endpoint.up:
            return
        endpoint.up = False
        endpoint.downs += 1
        endpoint.last_error = f"{type(error).__name__}: {endpoint.client.redact(str(error))}"
        log.warning("lmlink: endpoint %s taken out: %s", endpoint.url, endpoint.last_error)
        if not any(e.up for e in self.endpoints):
            self._fatal = error
        else:
            index = self.endpoints.index(endpoint)
            self._probes[index] = asyncio.ensure_future(self._probe(endpoint))
        self._changed(endpoint)

    async def _probe(self, endpoint: Endpoint) -> None:
        while not endpoint.up:  # bounded: cancelled by aclose(), or the endpoint rejoins
            await asyncio.sleep(endpoint.pause)
            endpoint.pause = min(endpoint.pause * 2, _PROBE_MAX)
            try:
                await endpoint.client.models()
            except LMLinkError:
                continue
            if self._fatal is not None:
                return
            endpoint.limiter = new_limiter(endpoint.ceiling)
            endpoint.up = True
            endpoint.strikes = 0
            endpoint.pause = _PROBE_FIRST
            log.warning("lmlink: endpoint %s is back", endpoint.url)
            self._changed(endpoint)

    def _changed(self, endpoint: Endpoint) -> None:
        self._wake()
        if self._on_change is not None:
            self._on_change(endpoint)

    async def aclose(self, *, clients: bool = True) -> None:
        """Stop the probes and (``clients=True``) close every client."""
        for task in self._probes.values():
            task.cancel()
        for task in self._probes.values():
            with contextlib.suppress(asyncio.CancelledError, LMLinkError):
                await task
        self._probes.clear()
        if clients:
            for endpoint in self.endpoints:
                await endpoint.client.aclose()


def endpoint_list(endpoint: str | Sequence[str] | None) -> list[str | None]:
    """``endpoint`` as a list: a comma-separated string or a list of URLs; ``None`` stays
    one unset endpoint (the client's own resolution)."""
    if endpoint is None:
        return [None]
    parts = endpoint.split(",") if isinstance(endpoint, str) else list(endpoint)
    urls = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    if len(urls) != len(parts) and not isinstance(endpoint, str):
        raise ConfigurationError(f"endpoint must be a URL or a list of URLs, not {endpoint!r}")
    return list(dict.fromkeys(urls)) or [None]
