"""Per-call options as a value: what a call's keywords mean to the client, not the body.

``chat(..., timeout=5, headers={...}, extra_body={...}, seed=7)``: :func:`split_options`
takes the keywords the client owns (``timeout``, ``headers``, ``extra_body``) out of the
keyword arguments once, at the boundary, into a :class:`CallOptions`; every other keyword is
a documented body field and goes into the request body as before. The OpenAI SDK's names are
understood: ``extra_headers=`` is ``headers=`` under another name; ``extra_query=`` is refused
(lmlink's requests carry no query string). Names the call itself sets are refused rather
than sent twice or overridden: ``stream`` (as a keyword or in ``extra_body``), and
``model`` / ``messages`` in ``extra_body`` (they have their own arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._config import Timeout
from ._errors import ConfigurationError

__all__ = ["NO_OPTIONS", "CallOptions", "header_secrets", "split_options"]

# Keywords that never go into the body: they would contradict what the call itself sends.
_REFUSED = {
    "stream": "use client.stream() or chat_stream() for a streamed answer",
}
# The same for extra_body, whose fields would silently replace the call's own.
_REFUSED_IN_BODY = {
    **_REFUSED,
    "model": "pass model= (the call's model) instead",
    "messages": "pass the messages as the call's first argument instead",
}
# Every keyword the client takes out of the body (checked in one set lookup per call).
_OWNED = frozenset({"stream", "timeout", "headers", "extra_headers", "extra_body", "extra_query"})


class CallOptions:
    """What one call changes on the client side: its timeout, extra headers (a None value
    leaves that header out), and body fields to merge in (``extra_body``, for
    server-specific fields)."""

    __slots__ = ("extra_body", "headers", "secrets", "timeout")

    def __init__(
        self,
        timeout: Timeout | None = None,
        headers: tuple[tuple[str, str | None], ...] = (),
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.timeout = timeout
        self.headers = headers
        self.extra_body = extra_body
        self.secrets = header_secrets(headers)


# Headers that carry credentials: a key given per call is blanked out of errors like the
# client's own (servers echo it, "invalid key sk-...").
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def header_secrets(headers: tuple[tuple[str, str | None], ...]) -> tuple[str, ...]:
    """The credentials among ``headers``: each value, and its token after the scheme
    (``Bearer sk-...``)."""
    out: list[str] = []
    for name, value in headers:
        if value is not None and name.lower() in _SECRET_HEADERS:
            out.append(value)
            token = value.split()[-1] if value.split() else ""
            if token != value:
                out.append(token)
    return tuple(out)


NO_OPTIONS = CallOptions()


def split_options(extra: dict[str, Any]) -> tuple[CallOptions, dict[str, Any]]:
    """``(options, body fields)`` from a call's extra keywords (``extra`` is not changed)."""
    if not extra or _OWNED.isdisjoint(extra):
        return NO_OPTIONS, extra
    for name, why in _REFUSED.items():
        if name in extra:
            raise ConfigurationError(f"{name}= is not a body field here: {why}")
    if "extra_query" in extra:
        raise ConfigurationError(
            "extra_query= is not supported: lmlink sends no query string (server-specific "
            "fields go in extra_body=)"
        )
    body = dict(extra)
    timeout = body.pop("timeout", None)
    headers = body.pop("headers", None)
    alias = body.pop("extra_headers", None)  # the OpenAI SDK's name for the same thing
    if alias is not None:
        if headers is not None:
            raise ConfigurationError("give headers= or extra_headers=, not both")
        headers = alias
    extra_body = body.pop("extra_body", None)
    if headers is not None and not isinstance(headers, Mapping):
        raise ConfigurationError(f"headers= must be a mapping, not {type(headers).__name__}")
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise ConfigurationError(f"extra_body= must be a mapping, not {type(extra_body).__name__}")
    if extra_body:
        for name, why in _REFUSED_IN_BODY.items():
            if name in extra_body:
                raise ConfigurationError(f"extra_body[{name!r}] is not allowed: {why}")
        twice = sorted(body.keys() & extra_body.keys())
        if twice:
            raise ConfigurationError(
                f"{twice[0]} is given twice, as {twice[0]}= and in extra_body: give one"
            )
        body.update(extra_body)
    # None leaves a header out (the client's Authorization for one call), never "None".
    pairs = tuple((str(k), None if v is None else str(v)) for k, v in (headers or {}).items())
    options = CallOptions(None if timeout is None else Timeout.coerce(timeout), pairs, extra_body)
    return options, body
