"""The exception tree. Every failure lmlink reports is one of these::

    LMLinkError
    ├── ConfigurationError          no model or endpoint, bad argument
    │   └── UnsupportedError        the server has no way to do that (``.server``)
    ├── APIConnectionError          could not connect, or the connection broke
    │   └── APITimeoutError         connect / idle / total deadline passed (``.phase``)
    ├── APIStatusError              the server answered with an error (``.status_code``, ``.body``)
    │   ├── BadRequestError         400 / 422 and validation failures (never retried)
    │   │   └── ContextLengthError  prompt longer than the context, whatever the wording
    │   │       └── PromptTooLongError  not sent: the prompt cannot fit (batch runner)
    │   ├── AuthenticationError     401
    │   ├── PermissionDeniedError   403
    │   ├── NotFoundError           404: unknown model or route
    │   ├── RateLimitError          429
    │   ├── OverloadedError         503
    │   │   └── ModelLoadingError   503 while the server loads its model
    │   └── InternalServerError     other 5xx
    ├── StreamError                 in-band error or truncated stream (``.partial``)
    ├── DecodeError                 a body that is not the JSON it should be
    └── ResponseTooLargeError       a body or SSE line over its cap

An error reported inside a stream, or a connection lost in the middle of one, is raised as
a class that is both a ``StreamError`` and the matching class above (see
:func:`stream_variant`): ``except ContextLengthError``, ``except APIConnectionError`` and
``except StreamError`` all see it, and ``.partial`` holds the text that did arrive.

Every error pickles (``__reduce__``): the batch runner moves them between processes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import ChatResponse

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ContextLengthError",
    "DecodeError",
    "InternalServerError",
    "LMLinkError",
    "ModelLoadingError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PromptTooLongError",
    "RateLimitError",
    "ResponseTooLargeError",
    "StreamError",
    "StructuredOutputError",
    "UnsupportedError",
]

BODY_LIMIT = 500


class LMLinkError(Exception):
    """Root of every error lmlink raises.

    >>> try:
    ...     client.chat("hi")
    ... except lmlink.LMLinkError as exc:
    ...     print("failed:", exc)
    """

    message: str

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in attrs.items():
            setattr(self, key, value)

    def _attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "message"}

    def __reduce__(self) -> tuple[Any, ...]:
        bases = tuple(c.__name__ for c in type(self).__bases__) if _is_variant(type(self)) else ()
        return (_rebuild, (type(self).__name__, bases, self.message, self._attrs()))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(LMLinkError):
    """lmlink was called in a way that cannot work (no model, no endpoint, bad value)."""


class UnsupportedError(ConfigurationError):
    """The server offers no way to do what was asked (say, count tokens: Ollama and LM
    Studio have no tokenizer endpoint). ``server`` is its kind (``"ollama"``...).

    >>> try:
    ...     client.count_tokens("hello")
    ... except lmlink.UnsupportedError as exc:
    ...     print(exc.server, exc)
    """

    server: str = "unknown"


class APIConnectionError(LMLinkError):
    """The server could not be reached, or the connection broke.

    ``request_sent`` tells whether the request may have reached the server; ``reason`` is a
    short word for what happened: ``"refused"``, ``"dns"``, ``"tls"``, ``"reset"``, ``"closed"``
    (the server closed the connection), ``"timeout"`` or ``""``.
    """

    request_sent: bool = False
    reason: str = ""


class APITimeoutError(APIConnectionError):
    """A timeout passed. ``phase`` is ``"connect"``, ``"idle"`` (no byte for that long),
    ``"pool"`` or ``"total"`` (the call's deadline); ``timeout`` is the limit in seconds."""

    phase: str = "idle"
    timeout: float | None = None


class APIStatusError(LMLinkError):
    """The server answered with an error.

    Attributes: ``status_code`` (int), ``body`` (the response text, at most 500 characters),
    ``retry_after`` (seconds the server asked us to wait, or None), ``error_type`` and
    ``error_code`` (from the error body when present).
    """

    status_code: int = 0
    body: str = ""
    retry_after: float | None = None
    error_type: str | None = None
    error_code: str | None = None


class BadRequestError(APIStatusError):
    """The server rejected the request (400, 422, or a validation failure). Never retried."""


class ContextLengthError(BadRequestError):
    """The prompt (plus ``max_tokens``) does not fit the model's context window.

    Shorten the messages or lower ``max_tokens``.
    """


class PromptTooLongError(ContextLengthError):
    """The batch runner did not send an item: its prompt alone fills the model's context
    window. ``prompt_tokens`` (the server's count, or lmlink's estimate when ``counted`` is
    False) and ``context_length``; ``status_code`` is 0, as no request was made.
    """

    prompt_tokens: int = 0
    context_length: int = 0
    counted: bool = True


class AuthenticationError(APIStatusError):
    """401: the server wants an API key (``api_key=`` or ``LMLINK_API_KEY``) or a different one."""


class PermissionDeniedError(APIStatusError):
    """403: the server refused the request (for Ollama: a non-local Host header)."""


class NotFoundError(APIStatusError):
    """404: the model or the route does not exist on this server."""


class RateLimitError(APIStatusError):
    """429: the server asks us to slow down. Retried with backoff."""


class OverloadedError(APIStatusError):
    """503: the server is busy. Retried with backoff."""


class ModelLoadingError(OverloadedError):
    """503 while the server loads its model. Waited for within the call's budget."""


class InternalServerError(APIStatusError):
    """A 5xx other than 503. 502 and 504 are retried."""


class StreamError(LMLinkError):
    """A stream reported an error or ended before it finished.

    ``partial`` holds what arrived before it broke (a :class:`ChatResponse`, possibly empty).
    """

    partial: ChatResponse | None = None


class DecodeError(LMLinkError):
    """The server sent a body that is not the JSON it should be."""


class ResponseTooLargeError(LMLinkError):
    """A response body or a stream line went over its size cap."""


class StructuredOutputError(LMLinkError):
    """The model's output did not validate against the requested schema.

    ``raw`` is the text, ``errors`` the validation messages, one per attempt.
    """

    raw: str = ""
    errors: list[str]


_VARIANTS: dict[str, type[StreamError]] = {}


def _is_variant(cls: type) -> bool:
    return cls.__name__ in _VARIANTS and _VARIANTS[cls.__name__] is cls


def stream_variant(cls: type[LMLinkError]) -> type[StreamError]:
    """The class for an error of kind ``cls`` reported inside a stream."""
    if issubclass(cls, StreamError):
        return cls
    name = f"Stream{cls.__name__}"
    found = _VARIANTS.get(name)
    if found is None:
        doc = f"{cls.__name__} reported inside a stream."
        found = type(name, (StreamError, cls), {"__doc__": doc, "__module__": __name__})
        _VARIANTS[name] = found
    return found


def _rebuild(name: str, bases: tuple[str, ...], message: str, attrs: dict[str, Any]) -> LMLinkError:
    module = sys.modules[__name__]
    if bases:
        base = getattr(module, bases[-1])
        cls: type[LMLinkError] = stream_variant(base)
    else:
        cls = getattr(module, name)
    return cls(message, **attrs)


def clip(text: str, limit: int = BODY_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
