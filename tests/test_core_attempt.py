"""The transport's decisions after a failed send or head read (pure, no I/O): both shells
take them from lmlink._http.attempt, so they cannot disagree. The same cases run through
real HTTP in test_transport.py (stale pooled connection, fresh connection closed) and
test_agreement.py (the early 413)."""

from __future__ import annotations

import pytest

from lmlink._errors import APIConnectionError, APITimeoutError, DecodeError, LMLinkError
from lmlink._http.attempt import Step, after_error, hear_early_answer
from lmlink._http.response import ResponseParser

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"


def _parser(data: bytes = b"") -> ResponseParser:
    parser = ResponseParser("127.0.0.1:1")
    if data:
        parser.feed(data)
    return parser


def _closed() -> APIConnectionError:
    return APIConnectionError("closed", request_sent=True, reason="closed")


@pytest.mark.parametrize("used", [0, 3], ids=["fresh", "pooled"])
def test_head_arrived_means_answered(used: int) -> None:
    """A failure after the head arrived hands the response out (its body comes first)."""
    assert after_error(_closed(), used, _parser(HEAD)) is Step.ANSWERED


@pytest.mark.parametrize("reason", ["closed", "reset"])
def test_pooled_connection_dead_before_any_byte_is_resent(reason: str) -> None:
    """A pooled connection that died before any answer byte: send again on a fresh one."""
    exc = APIConnectionError("x", request_sent=True, reason=reason)
    assert after_error(exc, 1, _parser()) is Step.RESEND


def test_fresh_connection_is_never_resent() -> None:
    """The resend happens once: the fresh connection it uses has served nothing."""
    assert after_error(_closed(), 0, _parser()) is Step.RAISE


def test_partial_answer_is_not_resent() -> None:
    """Some bytes of an answer arrived: the server processed the request, never resend."""
    assert after_error(_closed(), 2, _parser(b"HTTP/1.1 200")) is Step.RAISE


@pytest.mark.parametrize(
    "exc",
    [
        APITimeoutError("t", request_sent=True, reason="timeout"),
        DecodeError("bad frame"),
        APIConnectionError("tls", request_sent=True, reason="tls"),
    ],
    ids=["timeout", "protocol", "tls"],
)
def test_other_failures_raise(exc: LMLinkError) -> None:
    """Timeouts, broken framing and TLS errors on a pooled connection are raised."""
    assert after_error(exc, 1, _parser()) is Step.RAISE


def test_unsent_request_is_reported_not_sent() -> None:
    """A request still partly in the client's buffers is marked as not sent."""
    exc = APIConnectionError("reset", request_sent=True, reason="reset")
    assert after_error(exc, 0, _parser(), unsent=True) is Step.RAISE
    assert exc.request_sent is False


def test_early_answer_heard_after_a_broken_send_not_a_timeout() -> None:
    """After a broken pipe the server may have answered; after a send timeout, no."""
    assert hear_early_answer(APIConnectionError("pipe", request_sent=False, reason="reset"))
    assert not hear_early_answer(APITimeoutError("t", request_sent=False, reason="timeout"))
