"""Configuration values: :class:`Timeout`, :class:`RetryPolicy`, and how the client settles
its endpoint, model and API key from arguments and the environment.

All of them are small immutable values, checked once at the boundary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from ._errors import ConfigurationError
from ._values import FrozenRecord

__all__ = [
    "RetryPolicy",
    "Timeout",
    "resolve_endpoint",
    "resolve_setting",
    "split_credentials",
]

RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _check_seconds(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds or None, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be positive, not {value!r}")


class Timeout(FrozenRecord):
    """How long lmlink waits, in seconds. ``None`` switches a limit off.

    - ``connect``: to open the connection (TCP and TLS).
    - ``idle``: the longest wait for any byte: the time to the first token, every gap
      between streamed chunks, and for a non-streamed call the whole generation.
    - ``total``: one deadline for the whole call, across every retry and backoff wait.
      With a total deadline set, lmlink also keeps retrying a server that answered this
      client before and now refuses connections (one that is restarting) until the
      deadline; a server that never answered is tried ``max_retries`` times, then
      ``APIConnectionError`` says so ("is the server running?").

    A plain number given as ``timeout=`` is the idle timeout.

    >>> lmlink.Client(timeout=lmlink.Timeout(connect=5, idle=120, total=600))
    """

    __slots__ = ("connect", "idle", "total")
    connect: float | None
    idle: float | None
    total: float | None

    def __init__(
        self, connect: float | None = 10.0, idle: float | None = 60.0, total: float | None = None
    ) -> None:
        _check_seconds("Timeout.connect", connect)
        _check_seconds("Timeout.idle", idle)
        _check_seconds("Timeout.total", total)
        self._set(connect=connect, idle=idle, total=total)

    @classmethod
    def coerce(cls, value: float | Timeout | None) -> Timeout:
        """``value`` as a Timeout: a number is the idle timeout (connect at most 10 s)."""
        if isinstance(value, Timeout):
            return value
        if value is None:
            raise ConfigurationError(
                "timeout=None would let a call wait forever; pass a number of seconds or "
                "lmlink.Timeout(idle=None, total=...) to switch off only the idle limit"
            )
        _check_seconds("timeout", value)
        return cls(connect=min(10.0, float(value)), idle=float(value))


class RetryPolicy(FrozenRecord):
    """When and how long to wait before sending a failed request again.

    Retried: HTTP ``statuses`` (429, 502, 503, 504), refused or broken connections and
    connect timeouts, all before any byte of the answer arrived. Never retried: other
    statuses (400, 401, 404, 422, ...), idle timeouts, and a stream that already delivered
    text. The wait before retry *n* (1-based) is::

        min(backoff_max, backoff_initial * 2 ** (n - 1)) * (1 - jitter * random())

    unless the server sent ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date,
    RFC 9110 §10.2.3), which is used instead, capped at ``retry_after_max``.

    A server that says it is still loading its model (llama.cpp's 503 "Loading model",
    LocalAI's ``model_loading``) is waited for up to ``load_wait`` seconds without using
    up ``max_retries``; the call's total deadline still applies.

    >>> lmlink.Client(retry=lmlink.RetryPolicy(max_retries=5, backoff_max=4))
    """

    __slots__ = (  # noqa: RUF023 (the fields' order)
        "max_retries",
        "backoff_initial",
        "backoff_max",
        "jitter",
        "retry_after_max",
        "load_wait",
        "statuses",
    )
    max_retries: int
    backoff_initial: float
    backoff_max: float
    jitter: float
    retry_after_max: float
    load_wait: float
    statuses: frozenset[int]

    def __init__(
        self,
        max_retries: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        jitter: float = 0.5,
        retry_after_max: float = 60.0,
        load_wait: float = 300.0,
        statuses: frozenset[int] = RETRY_STATUSES,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise ConfigurationError(f"max_retries must be an int, not {max_retries!r}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, not {max_retries}")
        _check_seconds("backoff_initial", backoff_initial, allow_zero=True)
        _check_seconds("backoff_max", backoff_max, allow_zero=True)
        _check_seconds("retry_after_max", retry_after_max, allow_zero=True)
        _check_seconds("load_wait", load_wait, allow_zero=True)
        if not 0.0 <= jitter <= 1.0:
            raise ConfigurationError(f"jitter must be between 0 and 1, not {jitter}")
        self._set(
            max_retries=max_retries,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            jitter=jitter,
            retry_after_max=retry_after_max,
            load_wait=load_wait,
            statuses=statuses,
        )


def resolve_setting(value: str | None, env: Mapping[str, str], *names: str) -> str | None:
    """``value`` if given, else the first non-empty environment variable of ``names``."""
    if value is not None:
        return value
    for name in names:
        found = env.get(name, "").strip()
        if found:
            return found
    return None


def resolve_endpoint(value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The base URL through ``/v1``, without a trailing slash.

    A URL with no path gets ``/v1`` (``http://127.0.0.1:11434`` → ``…:11434/v1``).
    """
    raw = resolve_setting(
        value, os.environ if env is None else env, "LMLINK_ENDPOINT", "OPENAI_BASE_URL"
    )
    if raw is None:
        return None
    if "," in raw:
        raise ConfigurationError(
            f"one client talks to one server, and {raw!r} lists several: pass one of them "
            "as endpoint= (lmlink batch and run_batch take the list)"
        )
    parts = _split(raw.strip(), "endpoint")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"endpoint must be an http:// or https:// URL such as http://127.0.0.1:8080/v1, "
            f"not {raw!r}"
        )
    if "?" in raw or "#" in raw:
        raise ConfigurationError(
            f"endpoint must not have a ?query or #fragment (requests would go to the wrong "
            f"path): {raw.split('?')[0].split('#')[0]!r} is the base URL"
        )
    url = raw.strip().rstrip("/")
    if not parts.path.strip("/"):
        url += "/v1"
    return url


def _split(url: str, what: str) -> SplitResult:
    """``urlsplit(url)``; a URL it cannot read (``http://[::1``) is a ConfigurationError,
    not a bare ValueError (without the URL: it may hold a password)."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid {what}: {exc}") from None


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without a ``user:password@`` part; that part as an ``Authorization: Basic``
    value, and the secret to blank out of messages: the password, or the user name when
    there is no password (a token given as ``http://TOKEN@host/v1``). None, None when there
    is no such part."""
    parts = _split(url, "URL")
    if parts.username is None and parts.password is None:
        return url, None, None
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in the endpoint: {exc}") from None
    import base64
    from urllib.parse import unquote, urlunsplit

    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password or "")
    user = unquote(parts.username or "")
    pair = f"{user}:{password}".encode()
    return clean, base64.b64encode(pair).decode("ascii"), password or user or None
