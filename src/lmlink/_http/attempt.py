"""What a request does when its connection fails before the response head is whole.

Both transport shells send a request and read until the head has arrived; when a send or a
read fails on the way, the decision of what comes next is made here, once, from what
happened on that connection (never from how the shell does its I/O):

- the head arrived before the failure (some body, then a broken frame): the response is
  handed out, and the failure is raised after the body bytes that preceded it;
- the connection came from the pool and the server had closed it while it idled, before
  any byte of an answer (RFC 9112 section 9.3.1): nothing was processed, so the request is
  sent again on a fresh connection, once (a fresh connection is never stale);
- a send that broke (not one that timed out) may follow an answer the server sent before
  it stopped reading (a proxy's 413 for a body too large, a 401 before the body): the shell
  listens for that answer for :data:`EARLY_ANSWER_GRACE` seconds, and if a head arrives it
  is the outcome of the request rather than the broken pipe;
- anything else is raised; if part of the request never left the client, the error says
  it was not sent.
"""

from __future__ import annotations

from enum import Enum

from lmlink._errors import APIConnectionError, APITimeoutError, LMLinkError

from .response import ResponseParser

__all__ = ["EARLY_ANSWER_GRACE", "Step", "after_error", "hear_early_answer", "stale"]

# How long a shell listens for an answer after its send broke: a server that answers early
# has usually written its answer before it closed, so it is already in the socket buffer.
EARLY_ANSWER_GRACE = 1.0


class Step(Enum):
    """What the shell does after a failure before the response head was whole."""

    ANSWERED = "answered"  # hand out the response; the failure follows the body before it
    RESEND = "resend"  # close this connection, open a fresh one, send the request again
    RAISE = "raise"  # close this connection and raise the failure


def stale(used: int, parser: ResponseParser, exc: APIConnectionError) -> bool:
    """Whether a request failed on a kept-alive connection the server had already closed
    (RFC 9112 section 9.3.1): nothing of it was processed, so it may be sent again."""
    return bool(used) and not parser.received and exc.reason in ("closed", "reset")


def hear_early_answer(exc: APIConnectionError) -> bool:
    """After a failed send: whether the server may have answered before it stopped
    reading. A send that timed out has nothing to hear; a broken pipe or a reset may."""
    return not isinstance(exc, APITimeoutError)


def after_error(
    exc: LMLinkError, used: int, parser: ResponseParser, *, unsent: bool = False
) -> Step:
    """The step after ``exc`` ended a send or a read of the head on a connection that had
    served ``used`` responses before; ``parser`` holds what arrived. ``unsent``: part of
    the request was still in the client's buffers (the error then says it was not sent)."""
    if parser.head_done:
        return Step.ANSWERED
    if not isinstance(exc, APIConnectionError):
        return Step.RAISE
    if stale(used, parser, exc):
        return Step.RESEND
    if unsent:
        exc.request_sent = False
    return Step.RAISE
