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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
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
from lmlink._models import ChatResponse
from lmlink._retry import RetryState

from ._limiter import AIMDLimiter, Outcome
from ._outcome import is_overload

__all__ = ["STRIKES", "Endpoint", "EndpointPool", "new_limiter"]

#: Failures in a row (5xx, timeouts, broken connections) that take an endpoint out.
STRIKES = 3
_PROBE_FIRST = 1.0
_PROBE_MAX = 30.0
_OWN_RETRY = frozenset({429, 503})
_UNREACHABLE = frozenset({"refused", "dns", "tls"})
DEFAULT_CEILING = 8


def new_limiter(ceiling: int | None) -> AIMDLimiter:
    """The limit on requests in flight to one endpoint (``None``: the default ceiling)."""
    return AIMDLimiter(ceiling or DEFAULT_CEILING)


def unreachable(exc: LMLinkError) -> bool:
    """True when the server could not be reached at all (no request was read)."""
    return isinstance(exc, APIConnectionError) and exc.reason in _UNREACHABLE


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

    def try_start(self) -> Any:
        """A limiter ticket, or None when this endpoint is at its limit."""
        return self.limiter.try_start()

    def finish(self, ticket: Any, outcome: Outcome) -> None:
        """Give back the slot of ``ticket``."""
        self.limiter.finish(ticket, outcome)

    def room(self) -> float:
        """The share of this endpoint's limit that is free (0 when it is out or full)."""
        if not self.up or self.limiter.in_flight >= self.limiter.limit:
            return 0.0
        return (self.limiter.limit - self.limiter.in_flight) / self.limiter.limit

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
        on_change: Callable[[Endpoint], None] | None = None,
    ) -> None:
        if not clients:
            raise ValueError("an EndpointPool needs at least one client")
        self.endpoints = [Endpoint(c, ceiling) for c in clients]
        self._retry = retry or RetryPolicy()
        self._retry_here = retry_here
        self._on_change = on_change
        self._wake = asyncio.Event()
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

    # -- slots ---------------------------------------------------------------------------

    async def acquire(self) -> tuple[Endpoint, Any]:
        """A live endpoint with room and its limiter ticket; raises once none is left."""
        while True:  # bounded: every release or change of state wakes the waiters
            if self._fatal is not None:
                raise self._fatal
            best = max(self.endpoints, key=Endpoint.room)
            if best.room() > 0:
                ticket = best.try_start()
                if ticket is not None:
                    return best, ticket
            self._wake.clear()
            await self._wake.wait()

    def release(self, endpoint: Endpoint, ticket: Any, outcome: Outcome) -> None:
        """Give the slot back, telling its limiter how the request ended."""
        endpoint.finish(ticket, outcome)
        self._wake.set()

    # -- one item ------------------------------------------------------------------------

    async def ask(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any],
        stream: bool = False,
        fatal: Callable[[LMLinkError], bool] = lambda exc: False,
    ) -> ChatResponse | LMLinkError:
        """The answer to ``messages``, or the error the item keeps; raises the errors every
        item would share (``fatal(exc)``, or no endpoint left)."""
        state: RetryState | None = None
        moves = 0
        while True:  # bounded: moves, the retry budget, and endpoints going out
            endpoint, ticket = await self.acquire()
            outcome = Outcome.NEUTRAL
            try:
                client = endpoint.client
                if stream:
                    resp = await client.chat_stream(messages, model=model, **params)
                else:
                    resp = await client.chat(messages, model=model, **params)
                outcome = Outcome.OK
                endpoint.ok += 1
                endpoint.strikes = 0
                return resp
            except LMLinkError as exc:
                error = exc
                if is_overload(exc):
                    outcome = Outcome.OVERLOAD
            finally:
                self.release(endpoint, ticket, outcome)
            if self._elsewhere(endpoint, error):
                if moves < 2 * len(self.endpoints):
                    moves += 1
                    endpoint.moved += 1
                    continue
            elif fatal(error) or unreachable(error):
                raise error
            own = isinstance(error, APIStatusError) and error.status_code in _OWN_RETRY
            if not (self._retry_here and own and not isinstance(error, ModelLoadingError)):
                endpoint.failed += 1
                return error
            state = state or RetryState(self._retry, None)
            try:
                delay = state.delay_for(error)
            except LMLinkError:
                endpoint.failed += 1
                return error
            await asyncio.sleep(delay)

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
        self._wake.set()
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
