"""Blanking a client's secrets out of what it reports: :class:`Redactor`.

Servers echo what they were sent (an API key in a 401 message, a URL in a log line), and
errors get logged, pickled and written to batch output files. A client's secrets are its API
key and the credentials of its endpoint URL (a password, or a token given as the user name,
and their Basic value). Each is blanked in every form a server may echo it: as is, and
JSON-escaped (``"`` and ``\\`` escaped, non-ASCII as ``\\uXXXX``, and ``&``, ``<``, ``>`` as
``\\u0026``-style escapes, as Go's encoder writes them; ``/`` as ``\\/``), so that neither
the message nor ``json.loads(error.body)`` gives the secret back.

:meth:`Redactor.error` scrubs an error once, at the boundary where it leaves the client:
its message, body, error type and code, raw text and the ``partial`` answer of a stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._errors import LMLinkError

__all__ = ["NO_SECRETS", "Redactor"]

_MIN = 4  # shorter "secrets" would blank ordinary words


def _forms(secret: str) -> list[str]:
    """The ways ``secret`` can appear in a server's text."""
    import json  # only for clients that have secrets

    out = [secret]
    for ascii_only in (False, True):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        go = escaped.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        for form in (escaped, go, escaped.replace("/", "\\/"), go.replace("/", "\\/")):
            if form not in out:
                out.append(form)
    # JSON escapes are case-insensitive in their hex digits.
    for form in list(out):
        upper = _upper_escapes(form)
        if upper not in out:
            out.append(upper)
    return sorted(out, key=len, reverse=True)


def _upper_escapes(text: str) -> str:
    parts = text.split("\\u")
    return "\\u".join([parts[0], *(p[:4].upper() + p[4:] for p in parts[1:])])


class Redactor:
    """Blanks a fixed set of secrets out of text and errors (``***``)."""

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: list[str] = []
        for secret in secrets:
            if secret is not None and len(secret) >= _MIN:
                forms.extend(f for f in _forms(secret) if f not in forms)
        self._forms = tuple(sorted(forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def plus(self, secrets: Iterable[str | None]) -> Redactor:
        """A redactor for these secrets as well as this one's."""
        out = Redactor(secrets)
        out._forms = tuple(sorted({*self._forms, *out._forms}, key=len, reverse=True))
        return out

    def __call__(self, text: str) -> str:
        """``text`` with every form of every secret blanked out."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    def error(self, exc: LMLinkError) -> LMLinkError:
        """``exc`` with the secrets blanked out of everything it carries (in place)."""
        if not self._forms:
            return exc
        message = self(exc.message)
        if message != exc.message:
            exc.message = message
            exc.args = (message,)
        for name in ("body", "error_type", "error_code", "raw"):
            value = exc.__dict__.get(name)
            if isinstance(value, str):
                exc.__dict__[name] = self(value)
        errors = exc.__dict__.get("errors")
        if isinstance(errors, list):
            exc.__dict__["errors"] = [self(e) if isinstance(e, str) else e for e in errors]
        partial = exc.__dict__.get("partial")
        if partial is not None:
            self._response(partial)
        return exc

    def _response(self, resp: Any) -> None:
        from ._models import ToolCall

        resp.content = self(resp.content)
        resp.reasoning = self(resp.reasoning)
        if resp.model is not None:
            resp.model = self(resp.model)
        if resp.finish_reason_raw is not None:
            resp.finish_reason_raw = self(resp.finish_reason_raw)
        resp.tool_calls = [
            ToolCall(self(t.id), self(t.name), self(t.arguments), t.type) for t in resp.tool_calls
        ]


NO_SECRETS = Redactor()
