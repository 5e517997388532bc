"""lmlink's HTTP layer: a sans-I/O core and the transports that move its bytes.

- :mod:`.request`: URL targets and the exact bytes of a request (no header injection);
- :mod:`.response`: the incremental response parser (framing, caps, the gzip bound);
- :mod:`.common`: timeouts and wait budgets, TLS contexts, the response base, the
  wording of every transport error, fork safety;
- :mod:`.attempt`: what a request does when its connection fails before the response head
  is whole (resend on a fresh connection, hear the server's early answer, or raise), decided
  once for both shells;
- :mod:`.sync`: the blocking transport (``socket``, a thread-safe keep-alive pool);
- :mod:`.aio`: the asyncio transport (``asyncio.Protocol``; one pool per event loop) and
  :mod:`.aio_connection`, its connection;
- :mod:`.proxy`: transports through an HTTP proxy, built on httpx (an optional extra),
  for ``proxy=`` and ``trust_env=True``.

The clients see only the small protocols below: :class:`Transport` / :class:`AsyncTransport`
(``request`` returning once the head has arrived, ``close``) and the responses they return
(``status``, ``headers``, ``read``, the body as it arrives, ``discard_rest``, ``close``).
Nothing here is imported by ``import lmlink`` until a client is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .common import Timeouts

__all__ = ["AsyncHTTPResponse", "AsyncTransport", "HTTPResponse", "Transport"]


class HTTPResponse(Protocol):
    """A response whose head has arrived (blocking)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    def read(self, limit: int = ...) -> bytes: ...
    def iter_bytes(self) -> Iterator[bytes]: ...
    def discard_rest(self, grace: float) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> HTTPResponse: ...
    def __exit__(self, *exc_info: object) -> None: ...


class Transport(Protocol):
    """What :class:`lmlink.Client` needs from a transport."""

    def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> HTTPResponse: ...

    def close(self) -> None: ...


class AsyncHTTPResponse(Protocol):
    """A response whose head has arrived (asyncio)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self, limit: int = ...) -> bytes: ...
    def aiter_bytes(self) -> AsyncIterator[bytes]: ...
    async def discard_rest(self, grace: float) -> None: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> AsyncHTTPResponse: ...
    async def __aexit__(self, *exc_info: object) -> None: ...


class AsyncTransport(Protocol):
    """What :class:`lmlink.AsyncClient` needs from a transport (of the running loop)."""

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> AsyncHTTPResponse: ...
