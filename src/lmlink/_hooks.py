"""Event hooks: ``Client(event_hooks={"request": [fn], "response": [fn]})``, in httpx's shape.

Every HTTP request a client sends (each attempt of a call, retries included; chat, streams,
``models``, ``server_info`` and the other calls alike) is shown to the ``"request"`` hooks as
a :class:`Request` just before it goes out, and its answer to the ``"response"`` hooks as a
:class:`Response` once its head has arrived (the body is read by the client afterwards).
They are there to look: changing the objects changes nothing that is sent.

Secrets never reach a hook: the values of ``Authorization`` and the other credential
headers (``Proxy-Authorization``, ``X-API-Key``, ``api-key``, ``Cookie``, and any whose name
speaks of a key, token, secret, password, session or auth) are blanked out (``Bearer ***``).

An exception raised by a hook propagates to the caller unchanged, as httpx does: a request
hook's before the request is sent, a response hook's after the response is closed. (An
lmlink error raised by a hook is treated like the same error from the server: a retryable
one is retried.) The async client awaits what an async hook returns; the blocking client
refuses async hooks when it is made, and a hook that returns a coroutine when it runs.

A client without hooks pays for one attribute test per request.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from ._errors import ConfigurationError

__all__ = ["Headers", "Hooks", "Request", "Response"]

Hook = Callable[[Any], Any]

# Headers whose values are credentials: what a hook sees of them is blanked out. Besides the
# usual names, any name that says it holds one (X-Goog-Api-Key, X-Auth-Token,
# Ocp-Apim-Subscription-Key...): a gateway's key must not reach a log either.
_SECRET = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"})
_SECRET_WORDS = re.compile(r"auth|key|token|secret|passw|cookie|credential|session")


def _secret(name: str) -> bool:
    lower = name.lower()
    return lower in _SECRET or _SECRET_WORDS.search(lower) is not None


_KINDS = ("request", "response")


def _blank(value: str) -> str:
    """A credential's value as a hook sees it: its scheme kept (``Bearer ***``)."""
    scheme, _, rest = value.partition(" ")
    return f"{scheme} ***" if rest else "***"


class Headers(Mapping[str, str]):
    """Read-only headers, looked up whatever the case of the name; iterated as sent."""

    __slots__ = ("_items", "_lower")

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = tuple(items)
        self._lower = {name.lower(): value for name, value in self._items}

    def __getitem__(self, name: str) -> str:
        return self._lower[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lower

    def __repr__(self) -> str:
        return f"Headers({dict(self._items)!r})"


class Request:
    """A request about to be sent, as the ``"request"`` hooks see it: ``method``, ``url``,
    ``headers`` (credentials blanked out) and ``body`` (the bytes sent, ``b""`` for none).

    >>> def log_request(request):
    ...     print(request.method, request.url, len(request.body))
    """

    __slots__ = ("body", "headers", "method", "url")

    def __init__(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> None:
        self.method = method
        self.url = url
        self.headers = Headers([(n, _blank(v) if _secret(n) else v) for n, v in headers])
        self.body = body or b""

    @property
    def content(self) -> bytes:
        """The body (httpx's name for it)."""
        return self.body

    def __repr__(self) -> str:
        return f"<Request [{self.method} {self.url}]>"


class Response:
    """A response whose head has arrived, as the ``"response"`` hooks see it:
    ``status_code``, ``headers``, ``elapsed`` (a ``timedelta``: from sending the request to
    its head) and the ``request`` it answers.

    >>> def log_response(response):
    ...     print(response.request.url, response.status_code, response.elapsed.total_seconds())
    """

    __slots__ = ("elapsed", "headers", "request", "status_code")

    def __init__(
        self, request: Request, status: int, headers: Mapping[str, str], seconds: float
    ) -> None:
        self.request = request
        self.status_code = status
        self.headers = Headers(list(headers.items()))
        self.elapsed = timedelta(seconds=seconds)

    @property
    def is_error(self) -> bool:
        """Whether the status is 400 or more."""
        return self.status_code >= 400

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class Hooks:
    """A client's event hooks, checked once when the client is made."""

    __slots__ = ("request", "response")

    def __init__(self, hooks: Mapping[str, Sequence[Hook]]) -> None:
        if not isinstance(hooks, Mapping):
            raise ConfigurationError(
                "event_hooks= must be a dict like {'request': [fn], 'response': [fn]}, "
                f"not {type(hooks).__name__}"
            )
        unknown = set(hooks) - set(_KINDS)
        if unknown:
            raise ConfigurationError(
                f"event_hooks= takes 'request' and 'response', not {sorted(map(str, unknown))}"
            )
        lists: dict[str, tuple[Hook, ...]] = {}
        for kind in _KINDS:
            given = hooks.get(kind) or ()
            if callable(given) or isinstance(given, (str, bytes)):
                raise ConfigurationError(f"event_hooks[{kind!r}] must be a list of callables")
            listed = tuple(given)
            for fn in listed:
                if not callable(fn):
                    raise ConfigurationError(
                        f"event_hooks[{kind!r}] must hold callables, not {type(fn).__name__}"
                    )
            lists[kind] = listed
        self.request = lists["request"]
        self.response = lists["response"]

    @classmethod
    def of(cls, hooks: Mapping[str, Sequence[Hook]] | None) -> Hooks | None:
        """The hooks of ``event_hooks=``, or None when there are none (the fast path)."""
        if hooks is None:
            return None
        made = cls(hooks)
        return made if made.request or made.response else None

    def refuse_async(self) -> None:
        """For the blocking client: an async hook could never be awaited there."""
        import inspect

        for fn in (*self.request, *self.response):
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004 (an object with an async __call__)
            ):
                raise ConfigurationError(
                    f"event hook {getattr(fn, '__name__', fn)!r} is async: use AsyncClient"
                )

    def sending(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> Request:
        """Call the request hooks (blocking client); the Request they saw."""
        request = Request(method, url, headers, body)
        for fn in self.request:
            _returned(fn, fn(request))
        return request

    def answered(
        self, request: Request, status: int, headers: Mapping[str, str], seconds: float
    ) -> None:
        """Call the response hooks (blocking client)."""
        response = Response(request, status, headers, seconds)
        for fn in self.response:
            _returned(fn, fn(response))

    async def asending(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> Request:
        """Call the request hooks, awaiting async ones (async client)."""
        request = Request(method, url, headers, body)
        for fn in self.request:
            await _settle(fn(request))
        return request

    async def aanswered(
        self, request: Request, status: int, headers: Mapping[str, str], seconds: float
    ) -> None:
        """Call the response hooks, awaiting async ones (async client)."""
        response = Response(request, status, headers, seconds)
        for fn in self.response:
            await _settle(fn(response))


def _returned(fn: Hook, result: Any) -> None:
    """For the blocking client: a hook that hands back a coroutine (a lambda around an
    async function, say) would never run; it is refused rather than silently skipped. (A
    task or future it returns is already scheduled on its own loop: that is left alone.)"""
    if result is not None and isinstance(result, Coroutine):
        result.close()  # never awaited: no "never awaited" warning later
        raise ConfigurationError(
            f"event hook {getattr(fn, '__name__', fn)!r} returned a coroutine, which the "
            "blocking Client cannot await: use AsyncClient"
        )


async def _settle(result: Any) -> None:
    """Await what a hook returned, if it is awaitable (a plain hook returns None)."""
    if result is not None and isinstance(result, Awaitable):
        await result
