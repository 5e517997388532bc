"""Settings: Timeout, RetryPolicy, environment resolution, secrets in reprs."""

from __future__ import annotations

import types
from typing import Any

import pytest

import lmlink
from lmlink._config import resolve_endpoint


def test_float_timeout_is_the_idle_timeout() -> None:
    """timeout=5 means idle 5 s, connect at most 5 s, no total deadline."""
    assert lmlink.Timeout.coerce(5) == lmlink.Timeout(connect=5, idle=5, total=None)
    assert lmlink.Timeout.coerce(60).connect == 10


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), "5", True])
def test_bad_timeouts_are_rejected(bad: object) -> None:
    """Negative, zero, NaN and non-numbers raise ConfigurationError."""
    with pytest.raises(lmlink.ConfigurationError):
        lmlink.Timeout(idle=bad)  # type: ignore[arg-type]


def test_timeout_none_is_refused() -> None:
    """timeout=None would mean wait forever: refused with a hint."""
    with pytest.raises(lmlink.ConfigurationError, match="forever"):
        lmlink.Client(endpoint="http://127.0.0.1:1/v1", timeout=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ("http://h:1/v1/", {}, "http://h:1/v1"),
        ("http://h:1", {}, "http://h:1/v1"),
        (None, {"LMLINK_ENDPOINT": "http://a:2/v1"}, "http://a:2/v1"),
        (None, {"OPENAI_BASE_URL": "http://b:3/v1"}, "http://b:3/v1"),
        (
            None,
            {"LMLINK_ENDPOINT": "http://a:2/v1", "OPENAI_BASE_URL": "http://b:3/v1"},
            "http://a:2/v1",
        ),
        (None, {}, None),
    ],
    ids=["trailing-slash", "no-path", "lmlink-env", "openai-env", "lmlink-first", "none"],
)
def test_endpoint_resolution(given: str | None, env: dict[str, str], expected: str | None) -> None:
    """The argument wins, then LMLINK_ENDPOINT, then OPENAI_BASE_URL."""
    assert resolve_endpoint(given, env) == expected


def test_bad_endpoint_is_a_config_error() -> None:
    """A URL without http(s) raises a ConfigurationError naming the value."""
    with pytest.raises(lmlink.ConfigurationError, match="ftp"):
        resolve_endpoint("ftp://x", {})


def test_env_supplies_model_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """LMLINK_MODEL and LMLINK_API_KEY fill what the constructor leaves out."""
    monkeypatch.setenv("LMLINK_MODEL", "m1")
    monkeypatch.setenv("LMLINK_API_KEY", "sk-abcdef")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with lmlink.Client(endpoint="http://127.0.0.1:9/v1") as client:
        assert client.model == "m1"
        assert "sk-abcdef" not in repr(client)
        assert "***" in repr(client)


def test_retry_policy_validation() -> None:
    """Negative retries and out-of-range jitter are rejected."""
    with pytest.raises(lmlink.ConfigurationError):
        lmlink.RetryPolicy(max_retries=-1)
    with pytest.raises(lmlink.ConfigurationError):
        lmlink.RetryPolicy(jitter=2)


def test_exported_names_match_all() -> None:
    """__all__ is sorted and is exactly the public names of the package, lazy ones included."""
    public = {
        n
        for n in dir(lmlink)
        if not n.startswith("_")
        and not isinstance(getattr(lmlink, n), types.ModuleType)
        and n not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    assert sorted(lmlink.__all__) == lmlink.__all__
    assert set(lmlink.__all__) - {"__version__"} == public
    for name in lmlink.__all__:
        assert getattr(lmlink, name) is not None


def test_import_does_not_load_asyncio() -> None:
    """`import lmlink` stays light: asyncio, ssl, the validators, logging, and dataclasses
    with inspect behind it load only when used."""
    import subprocess
    import sys

    code = (
        "import sys, lmlink; "
        "heavy = ('asyncio', 'ssl', 'jsonschema', 'pydantic', 'logging', 'dataclasses', "
        "'inspect', 'orjson'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


_STREAM_WARNING = (
    "with lmlink.Client(endpoint=srv.url, model='m') as c:\n"
    "    srv.enqueue(Reply(content='abcd', chunk_chars=2, malformed_at=[1]))\n"
    "    assert c.chat_stream('hi').content == 'abcd'\n"
)
_BATCH_WARNING = (  # the output file ends in a torn line: the runner repairs it and warns
    "import os, tempfile\n"
    "from lmlink.batch import run_batch\n"
    "out = os.path.join(tempfile.mkdtemp(), 'out.jsonl')\n"
    "with open(out, 'w') as f:\n"
    '    f.write(\'{"lmlink":"batch-outp\')\n'  # a run killed while writing the header
    "s = run_batch([{'id': 'a', 'prompt': 'hi'}], out, endpoint=srv.url, model='m')\n"
    "assert s.ok == 1 and s.repaired_bytes > 0, s\n"
)


@pytest.mark.parametrize("warning", [_STREAM_WARNING, _BATCH_WARNING], ids=["stream", "batch"])
@pytest.mark.parametrize("prefix", ["", "import logging\n"], ids=["lazy", "logging-first"])
def test_the_library_never_prints_and_has_a_null_handler(prefix: str, warning: str) -> None:
    """In a program that configures no logging, lmlink's first record, a WARNING (a skipped
    stream chunk; a torn line the batch runner repaired), prints nothing, and the "lmlink"
    logger has a NullHandler, whether logging was imported before lmlink or only after."""
    import subprocess
    import sys
    import textwrap

    code = (
        f"{prefix}import lmlink\n"
        "from lmlink.testing import FakeServer, Reply\n"
        "with FakeServer() as srv:\n"
        f"{textwrap.indent(warning, '    ')}"
        "import logging\n"
        "print([type(h).__name__ for h in logging.getLogger('lmlink').handlers])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""
    assert out.stdout.strip() == "['NullHandler']"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_response_bytes", 0),
        ("max_response_bytes", 2**63),
        ("max_response_bytes", 1e9 + 0.5),
        ("max_response_bytes", True),
        ("max_connections", 0),
        ("max_connections", 2.5),
        ("structured_retries", -1),
        ("structured_retries", "1"),
    ],
)
@pytest.mark.parametrize("cls", [lmlink.Client, lmlink.AsyncClient])
def test_counts_are_checked_when_the_client_is_made(cls: Any, name: str, value: Any) -> None:
    """Sizes and counts must be whole numbers in range: caught at construction, not as an
    OverflowError from zlib at the first gzip response."""
    with pytest.raises(lmlink.ConfigurationError, match=name):
        cls(endpoint="http://127.0.0.1:9/v1", **{name: value})


def test_a_whole_float_is_a_count_and_a_bad_port_with_credentials_is_typed() -> None:
    """``max_response_bytes=64e6`` is 64,000,000; a URL with user:password@ and a port that
    is not a number is a ConfigurationError at construction, like any bad endpoint."""
    client = lmlink.Client(endpoint="http://127.0.0.1:9/v1", max_response_bytes=64e6)
    client.close()
    with pytest.raises(lmlink.ConfigurationError, match="port"):
        lmlink.Client(endpoint="http://u:p@127.0.0.1:abc/v1")


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_one_client_refuses_a_list_of_endpoints(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comma-separated list (meant for lmlink batch) would send one client's requests to a
    mangled path on the first host: refused, naming where a list belongs."""
    urls = "http://127.0.0.1:1/v1,http://127.0.0.1:2/v1"
    if where == "environment":
        monkeypatch.setenv("LMLINK_ENDPOINT", urls)
    for make in (lmlink.Client, lmlink.AsyncClient):
        with pytest.raises(lmlink.ConfigurationError, match="lists several"):
            make(endpoint=urls if where == "argument" else None, model="m")


def test_lmlink_chat_with_a_list_of_endpoints_says_so_in_one_line() -> None:
    """`lmlink chat` with LMLINK_ENDPOINT set for a several-server batch exits 2 with one
    line, instead of talking to a wrong path."""
    from batch_helpers import run_cli

    done = run_cli(
        ["chat", "hi", "-m", "m"], LMLINK_ENDPOINT="http://127.0.0.1:1/v1,http://127.0.0.1:2/v1"
    )
    assert done.returncode == 2, done.stderr
    assert "lists several" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
