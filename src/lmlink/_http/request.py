"""Sans-I/O HTTP/1.1 requests: URL targets and the exact bytes of a request.

:func:`parse_url` splits an endpoint URL once (cached) into what the transports need: the
pool key, the address, and the request line's tail with its ``Host`` header.
:func:`build_request` turns a call into one ``bytes`` for a single write, and refuses a
CR or LF anywhere in the method or headers (no header injection). The response side is
:mod:`lmlink._http.response`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

from lmlink._errors import ConfigurationError

__all__ = ["Target", "build_request", "parse_url"]


class Target(NamedTuple):
    """The parts of an absolute URL the transports need, computed once per URL."""

    key: tuple[str, str, int]  # the origin: connections are pooled per key
    https: bool
    host: str  # for connect() and SNI: no IPv6 brackets
    port: int
    where: str  # "host:port", for error messages
    tail: str  # " /path?query HTTP/1.1\r\nHost: ...\r\n": the request line after the method


@functools.lru_cache(maxsize=256)
def parse_url(url: str) -> Target:
    """Split an absolute ``http(s)`` URL. Cached: a client calls the same few URLs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"invalid URL {url!r}: expected http://host[:port]/path")
    https = scheme == "https"
    default = 443 if https else 80
    port = default if port is None else port
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if not path.isprintable() or " " in path or not path.isascii():
        raise ConfigurationError(f"invalid URL {url!r}: the path must be percent-encoded")
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default else f"{name}:{port}"
    tail = f" {path} HTTP/1.1\r\nHost: {host_header}\r\n"
    return Target((scheme, host, port), https, host, port, f"{name}:{port}", tail)


def build_request(
    method: str, target: Target, headers: Sequence[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request head (and body) as one ``bytes``, ready for a single write.

    ``Host`` and ``Content-Length`` are written here; a ``Host`` among ``headers`` replaces
    ours (Ollama checks it), a ``Content-Length`` there is ignored. No ``Accept-Encoding``:
    without it servers answer with identity bodies.
    """
    tail = target.tail
    custom = [(n, v) for n, v in headers if len(n) in (4, 14)]
    for name, value in custom:
        low = name.lower()
        if low == "host":
            tail = f"{tail[: tail.index(chr(13))]}\r\nHost: {value}\r\n"
        if low in ("host", "content-length"):
            headers = [(n, v) for n, v in headers if n.lower() != low]
    block = "".join([f"{n}: {v}\r\n" for n, v in headers])
    if body is None:
        text = f"{method}{tail}{block}\r\n"
        lines = len(headers) + 3
    else:
        text = f"{method}{tail}Content-Length: {len(body)}\r\n{block}\r\n"
        lines = len(headers) + 4
    # A CR or LF inside the method, a name or a value would inject lines (RFC 9112 sec. 2-5).
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ConfigurationError("the method and headers must not contain CR or LF")
    try:
        head = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"header values must be latin-1 text: {exc}") from exc
    if not body:
        return head
    return head + body
