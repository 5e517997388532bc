"""The batch engine through its Python API (lmlink.batch.run_batch / arun_batch), against a
real fake server on a free port."""

from __future__ import annotations

import _thread
import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lmlink
from batch_helpers import clean_env, lmlink_command, prompts, read_jsonl, write_jsonl
from lmlink.batch import (
    BatchInputError,
    BatchItem,
    BatchSummary,
    Progress,
    Task,
    arun_batch,
    run_batch,
)
from lmlink.batch._outcome import is_fatal, is_overload
from lmlink.testing import FakeServer, RecordedRequest, Reply

KEYS = {
    "id",
    "content",
    "reasoning",
    "parsed",
    "finish_reason",
    "prompt_tokens",
    "output_tokens",
    "latency_s",
    "ttft_s",
    "model",
}


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def _echo(request: RecordedRequest) -> Reply:
    return Reply(content="re: " + request.json["messages"][-1]["content"], usage=(3, 2))


def _run(server: FakeServer, items: Any, out: Path, **kwargs: Any) -> BatchSummary:
    kwargs.setdefault("endpoint", server.url)
    kwargs.setdefault("model", "fake-model")
    kwargs.setdefault("timeout", 5.0)
    return run_batch(items, out, **kwargs)


def test_every_item_gets_one_line_with_the_documented_fields(
    server: FakeServer, tmp_path: Path
) -> None:
    """A run writes one line per id with content, usage, timings and model; the summary agrees."""
    server.responder = _echo
    out = tmp_path / "out.jsonl"
    summary = _run(server, prompts(20), out)
    lines = read_jsonl(out)
    assert sorted(line["id"] for line in lines) == [f"p{i:03d}" for i in range(20)]
    for line in lines:
        assert set(line) == KEYS
        assert line["content"] == "re: question " + str(int(line["id"][1:]))
        assert (line["prompt_tokens"], line["output_tokens"], line["finish_reason"]) == (
            3,
            2,
            "stop",
        )
        assert line["latency_s"] >= line["ttft_s"] > 0
        assert line["model"] == "fake-model"
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (20, 20, 0, 0)
    assert summary.complete
    assert summary.output_tokens == 40
    assert summary.latency_p50 is not None
    assert summary.latency_p95 is not None
    assert summary.latency_p95 >= summary.latency_p50
    assert summary.ttft_p50 is not None
    assert "20 items: 20 ok, 0 failed" in summary.describe()
    assert server.stats.chat_requests == 20


def test_requests_carry_the_run_and_row_parameters(server: FakeServer, tmp_path: Path) -> None:
    """Run-wide keywords go into every request; a row's own options win; streams are used."""
    rows = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "max_tokens": 3, "seed": 1}]
    _run(server, rows, tmp_path / "out.jsonl", max_tokens=50, temperature=0.0, system="Short.")
    sent = {r.json["messages"][-1]["content"]: r.json for r in server.requests}
    assert sent["x"]["max_tokens"] == 50
    assert (sent["y"]["max_tokens"], sent["y"]["seed"]) == (3, 1)
    assert sent["x"]["temperature"] == 0.0
    assert sent["x"]["stream"] is True
    assert sent["x"]["messages"][0] == {"role": "system", "content": "Short."}


def test_plain_requests_with_stream_false(server: FakeServer, tmp_path: Path) -> None:
    """stream=False sends ordinary requests and still records the timings."""
    _run(server, prompts(3), tmp_path / "out.jsonl", stream=False)
    assert all("stream" not in r.json for r in server.requests)
    assert all(line["ttft_s"] is not None for line in read_jsonl(tmp_path / "out.jsonl"))


def test_a_failing_item_is_an_error_line_and_the_run_goes_on(
    server: FakeServer, tmp_path: Path
) -> None:
    """A 400 for one item becomes its error line (type, message, status); the rest succeed."""

    def respond(request: RecordedRequest) -> Reply:
        if request.json["messages"][-1]["content"] == "question 3":
            return Reply.error(400, "prompt too odd")
        return Reply(content="ok")

    server.responder = respond
    out = tmp_path / "out.jsonl"
    summary = _run(server, prompts(6), out)
    by_id = {line["id"]: line for line in read_jsonl(out)}
    assert by_id["p003"] == {
        "id": "p003",
        "error": {
            "type": "BadRequestError",
            "message": by_id["p003"]["error"]["message"],
            "status_code": 400,
        },
    }
    assert "prompt too odd" in by_id["p003"]["error"]["message"]
    assert (summary.ok, summary.failed, summary.errors) == (5, 1, {"BadRequestError": 1})
    assert summary.complete
    assert "BadRequestError, e.g. p003:" in summary.describe()


def test_a_rerun_sends_only_what_is_missing(server: FakeServer, tmp_path: Path) -> None:
    """Ids already in the output are skipped; the new ones are appended."""
    out = tmp_path / "out.jsonl"
    _run(server, prompts(5), out)
    server.reset()
    summary = _run(server, prompts(8), out)
    assert server.stats.chat_requests == 3
    assert (summary.skipped, summary.ok) == (5, 3)
    assert sorted(line["id"] for line in read_jsonl(out)) == [f"p{i:03d}" for i in range(8)]


def test_retry_errors_runs_only_the_failed_ids_again(server: FakeServer, tmp_path: Path) -> None:
    """retry_errors=True replaces error lines by new results and leaves good lines alone."""
    out = tmp_path / "out.jsonl"
    server.responder = lambda r: (
        Reply.error(400, "no")
        if r.json["messages"][-1]["content"] in ("question 1", "question 4")
        else Reply(content="ok")
    )
    _run(server, prompts(6), out)
    server.reset()
    server.responder = lambda r: Reply(content="fixed")
    summary = _run(server, prompts(6), out, retry_errors=True)
    assert server.stats.chat_requests == 2
    assert (summary.retried, summary.ok, summary.failed, summary.skipped) == (2, 2, 0, 4)
    lines = read_jsonl(out)
    assert len(lines) == 6
    assert {line["id"]: line["content"] for line in lines if line["content"] == "fixed"}.keys() == {
        "p001",
        "p004",
    }


def test_the_cache_answers_a_rerun_without_sending_anything(
    server: FakeServer, tmp_path: Path
) -> None:
    """With cache=, a second run into a new output sends zero requests and writes the same answers."""
    server.responder = _echo
    cache = tmp_path / "cache.sqlite"
    _run(server, prompts(10), tmp_path / "one.jsonl", cache=cache, api_key="sk-secret-key-123")
    assert server.stats.chat_requests == 10
    server.reset()
    summary = _run(
        server, prompts(10), tmp_path / "two.jsonl", cache=cache, api_key="sk-secret-key-123"
    )
    assert server.stats.requests == 0
    assert summary.cached == 10
    one = sorted(read_jsonl(tmp_path / "one.jsonl"), key=lambda r: r["id"])
    two = sorted(read_jsonl(tmp_path / "two.jsonl"), key=lambda r: r["id"])
    assert one == two
    # Like every result line, a cache hit's starts with its id (a torn one is recognised).
    head, *lines = (tmp_path / "two.jsonl").read_bytes().splitlines()
    assert head.startswith(b'{"lmlink":"batch-output"')
    assert all(line.startswith(b'{"id":') for line in lines)
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for path in tmp_path.glob("cache.sqlite*"):
        assert b"sk-secret-key-123" not in path.read_bytes()


def test_the_cache_key_covers_parameters_and_model(server: FakeServer, tmp_path: Path) -> None:
    """A different max_tokens or model is a cache miss."""
    cache = tmp_path / "cache.sqlite"
    _run(server, prompts(2), tmp_path / "a.jsonl", cache=cache, max_tokens=5)
    _run(server, prompts(2), tmp_path / "b.jsonl", cache=cache, max_tokens=6)
    _run(server, prompts(2), tmp_path / "c.jsonl", cache=cache, max_tokens=6, model="other")
    assert server.stats.chat_requests == 6


def test_the_cache_key_covers_a_pydantic_schema_not_its_name(
    server: FakeServer, tmp_path: Path
) -> None:
    """Two pydantic classes of the same name with different fields are different requests:
    the second run is not answered from the first one's cache."""
    pydantic = pytest.importorskip("pydantic")
    v1 = pydantic.create_model("Ticket", label=(str, ...))
    v2 = pydantic.create_model("Ticket", category=(str, ...), priority=(int, ...))
    server.responder = lambda r: Reply(
        content='{"label": "bug"}'
        if "label" in str(r.json.get("response_format"))
        else '{"category": "bug", "priority": 2}'
    )
    cache = tmp_path / "cache.sqlite"
    _run(server, prompts(1), tmp_path / "a.jsonl", cache=cache, response_format=v1)
    summary = _run(server, prompts(1), tmp_path / "b.jsonl", cache=cache, response_format=v2)
    assert summary.cached == 0
    assert server.stats.chat_requests == 2
    assert read_jsonl(tmp_path / "b.jsonl")[0]["parsed"] == {"category": "bug", "priority": 2}
    again = _run(server, prompts(1), tmp_path / "c.jsonl", cache=cache, response_format=v2)
    assert again.cached == 1


def test_a_failing_cache_is_dropped_and_the_run_goes_on(server: FakeServer, tmp_path: Path) -> None:
    """A cache that cannot be written (here: a file-size limit the output stays under, the
    SQLite log does not) is a warning, not a crash: every item still gets its line."""
    import resource

    src = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache.sqlite"
    limit = 48 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["batch", str(src), "-o", str(out), "--cache", str(cache), "--progress", "off"]
    result = subprocess.run(
        [*lmlink_command(), *args, "-e", server.url, "-m", "fake-model"],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
        preexec_fn=small_files,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"warning: the cache {cache} failed" in result.stderr
    assert len(read_jsonl(out)) == 60
    assert out.stat().st_size < limit


def test_errors_are_not_cached(server: FakeServer, tmp_path: Path) -> None:
    """Only answers go into the cache; a failed item is sent again next time."""
    cache = tmp_path / "cache.sqlite"
    server.enqueue(Reply.error(400, "no"))
    _run(server, prompts(1), tmp_path / "a.jsonl", cache=cache)
    _run(server, prompts(1), tmp_path / "b.jsonl", cache=cache)
    assert server.stats.chat_requests == 2
    assert "content" in read_jsonl(tmp_path / "b.jsonl")[0]


def test_concurrency_is_bounded(server: FakeServer, tmp_path: Path) -> None:
    """No more than `concurrency` requests are ever open at the server."""
    server.responder = lambda r: Reply(content="slow answer here", chunk_chars=4, delay=0.01)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            s = server.live_stats
            peak = max(peak, s.streams_started - s.streams_completed - s.client_disconnects)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        _run(server, prompts(30), tmp_path / "out.jsonl", concurrency=3)
    finally:
        stop.set()
        sampler.join()
    assert peak == 3


def test_rate_limits_shrink_concurrency_then_it_grows_back(
    server: FakeServer, tmp_path: Path
) -> None:
    """Once the limit has grown, a burst of 429s halves it (seen in progress); they are
    retried, every item ends ok, and the limit grows again afterwards."""
    burst = {f"question {n}" for n in range(250, 258)}
    refused: set[str] = set()

    def answer(request: RecordedRequest) -> Reply:
        text = request.json["messages"][-1]["content"]
        if text in burst and text not in refused:
            refused.add(text)  # each item of the burst is refused once
            return Reply.error(429, "slow down", retry_after=0)
        return Reply(content="ok", delay=0.008)

    server.responder = answer
    seen: list[Progress] = []
    # Items enough after the burst (at 250) for the limit to grow back even on a slow,
    # busy machine.
    summary = _run(
        server, prompts(600), tmp_path / "out.jsonl", concurrency=8, on_progress=seen.append
    )
    assert (summary.ok, summary.failed) == (600, 0)
    assert server.stats.chat_requests == 608
    limits = [p.concurrency for p in seen]
    peak = limits.index(max(limits))
    low = min(limits[peak:])
    assert max(limits) == 8
    assert low <= 4
    assert max(limits[limits.index(low, peak) :]) > low
    # How far it fell depends on how the burst's refusals spread over the halvings (one
    # per burst: refusals of requests sent before a halving do not count again), which
    # scheduling decides; the summary's range holds at least what progress showed.
    assert summary.concurrency_range is not None
    lowest, highest = summary.concurrency_range
    assert highest == 8
    assert 1 <= lowest <= low


def test_rate_limits_past_the_retry_budget_are_error_lines(
    server: FakeServer, tmp_path: Path
) -> None:
    """An item that keeps getting 429 ends as a RateLimitError line after max_retries."""
    server.responder = lambda r: Reply.error(429, "slow down", retry_after=0)
    out = tmp_path / "out.jsonl"
    summary = _run(server, prompts(1), out, retry=lmlink.RetryPolicy(max_retries=2))
    assert server.stats.chat_requests == 3
    assert read_jsonl(out)[0]["error"]["type"] == "RateLimitError"
    assert read_jsonl(out)[0]["error"]["status_code"] == 429
    assert summary.errors == {"RateLimitError": 1}


def test_progress_reports_to_the_callback_and_ends_final(
    server: FakeServer, tmp_path: Path
) -> None:
    """on_progress sees done counts rise to the total; the last snapshot is final."""
    seen: list[Progress] = []
    _run(server, prompts(12), tmp_path / "out.jsonl", on_progress=seen.append)
    assert seen[-1].final
    assert (seen[-1].done, seen[-1].total, seen[-1].ok) == (12, 12, 12)
    dones = [p.done for p in seen]
    assert dones == sorted(dones)
    assert sum(p.final for p in seen) == 1


def test_no_server_stops_the_run_and_writes_nothing(tmp_path: Path) -> None:
    """A refused connection is fatal: raised, and the output this run created is removed."""
    out = tmp_path / "out.jsonl"
    with FakeServer() as gone:
        url = gone.url
    with pytest.raises(lmlink.APIConnectionError, match="refused"):
        run_batch(prompts(5), out, endpoint=url, model="m", retry=lmlink.RetryPolicy(max_retries=0))
    assert not out.exists()


def test_a_wrong_api_key_stops_the_run(tmp_path: Path) -> None:
    """A 401 would hit every item: the run stops with AuthenticationError."""
    with FakeServer(api_key="right") as srv, pytest.raises(lmlink.AuthenticationError):
        run_batch(prompts(5), tmp_path / "out.jsonl", endpoint=srv.url, model="m", api_key="wrong")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_model_defaults_to_the_servers_first(server: FakeServer, tmp_path: Path) -> None:
    """Without a model, the server's first listed model is used."""
    summary = run_batch(prompts(2), tmp_path / "out.jsonl", endpoint=server.url)
    assert summary.model == "fake-model"
    assert {r.json["model"] for r in server.requests if r.json} == {"fake-model"}


def test_input_errors_are_raised_before_anything_is_sent(
    server: FakeServer, tmp_path: Path
) -> None:
    """Bad rows raise BatchInputError; no request, no output file."""
    out = tmp_path / "out.jsonl"
    with pytest.raises(BatchInputError, match="item 2: duplicate id"):
        _run(server, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], out)
    assert server.stats.requests == 0
    assert not out.exists()


def test_items_from_files_and_the_output_must_differ(server: FakeServer, tmp_path: Path) -> None:
    """A JSONL path works as items; using the input as the output is refused."""
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    assert _run(server, src, tmp_path / "out.jsonl").ok == 3
    with pytest.raises(lmlink.ConfigurationError, match="is the input"):
        _run(server, src, src)


def test_a_given_async_client_is_used_and_left_open(server: FakeServer, tmp_path: Path) -> None:
    """arun_batch(client=...) sends through that client and does not close it."""

    async def main() -> None:
        async with lmlink.AsyncClient(
            endpoint=server.url, model="fake-model", headers={"X-Run": "7"}
        ) as client:
            summary = await arun_batch(prompts(4), tmp_path / "out.jsonl", client=client)
            assert summary.ok == 4
            assert (await client.chat("still open")).content

    asyncio.run(main())
    assert all(r.headers.get("x-run") == "7" for r in server.requests)


def test_run_batch_works_inside_a_running_event_loop(server: FakeServer, tmp_path: Path) -> None:
    """Called where a loop already runs (a notebook cell), run_batch still runs to the end:
    every id once, the summary matching, the caller's loop untouched."""
    server.responder = _echo
    out = tmp_path / "out.jsonl"

    async def main() -> BatchSummary:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            ticks += 1

        summary = _run(server, prompts(20), out)
        await ticker()  # the caller's loop still works afterwards
        assert ticks == 1
        return summary

    summary = asyncio.run(main())
    assert summary.ok == 20
    assert sorted(line["id"] for line in read_jsonl(out)) == sorted(p["id"] for p in prompts(20))
    assert not [t for t in threading.enumerate() if t.name == "lmlink-run-sync" and t.is_alive()]


class _SlowFinal:
    """An on_progress callback whose final snapshot takes 0.5 s, so a caller that got its
    interrupt before the worker stopped would see ``final_seen`` still False."""

    def __init__(self) -> None:
        self.final_seen = False

    def __call__(self, progress: Progress) -> None:
        if progress.final:
            time.sleep(0.5)
            self.final_seen = True


def _interrupt_when_busy(server: FakeServer) -> None:
    def interrupt() -> None:
        server.wait_for(lambda: server.stats.chat_requests >= 8, timeout=10)
        _thread.interrupt_main()  # as Ctrl-C: the SIGINT handler runs in the main thread

    threading.Thread(target=interrupt, daemon=True).start()


def _check_interrupted_run(server: FakeServer, out: Path, hook: _SlowFinal) -> None:
    assert hook.final_seen  # the worker had finished when the interrupt reached the caller
    assert not [t for t in threading.enumerate() if t.name == "lmlink-run-sync" and t.is_alive()]
    done = read_jsonl(out)
    assert len(done) < 100
    server.wait_for(lambda: server.live_stats.active_connections == 0, timeout=5)
    summary = _run(server, prompts(100), out)
    assert summary.skipped == len(done)
    assert len(read_jsonl(out)) == 100


def test_ctrl_c_inside_a_running_loop_cancels_the_batch(server: FakeServer, tmp_path: Path) -> None:
    """KeyboardInterrupt while run_batch waits on its worker thread (a kernel interrupt in a
    notebook): the requests in flight are cancelled, KeyboardInterrupt reaches the caller
    once the worker has stopped, the file holds whole lines only, and a re-run completes it."""
    server.responder = lambda r: Reply(content="a b c d e f g h", chunk_chars=2, delay=0.02)
    out = tmp_path / "out.jsonl"
    hook = _SlowFinal()

    async def main() -> None:
        _interrupt_when_busy(server)
        with pytest.raises(KeyboardInterrupt):
            _run(server, prompts(100), out, concurrency=4, on_progress=hook)
        assert hook.final_seen

    # run_until_complete keeps Python's own SIGINT handler, as a notebook kernel does
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    _check_interrupted_run(server, out, hook)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.run handles SIGINT from 3.11")
def test_ctrl_c_under_asyncio_run_cancels_the_batch(server: FakeServer, tmp_path: Path) -> None:
    """A blocking run_batch called inside ``asyncio.run``: asyncio's SIGINT handler only
    cancels its main task, which cannot run while run_batch blocks it; run_batch notices,
    cancels the batch, and asyncio.run ends with KeyboardInterrupt at the first Ctrl-C."""
    server.responder = lambda r: Reply(content="a b c d e f g h", chunk_chars=2, delay=0.02)
    out = tmp_path / "out.jsonl"
    hook = _SlowFinal()

    async def main() -> None:
        _interrupt_when_busy(server)
        _run(server, prompts(100), out, concurrency=4, on_progress=hook)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    _check_interrupted_run(server, out, hook)


def test_cancelling_stops_in_flight_requests_and_leaves_whole_lines(
    server: FakeServer, tmp_path: Path
) -> None:
    """Cancelling arun_batch aborts the requests in flight; the file holds only whole lines."""
    server.responder = lambda r: Reply(content="a b c d e f g h", chunk_chars=2, delay=0.02)
    out = tmp_path / "out.jsonl"

    async def main() -> None:
        task = asyncio.ensure_future(_arun(server, out))
        await asyncio.sleep(0.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    done = read_jsonl(out)
    assert 0 < len(done) < 100
    server.wait_for(lambda: server.live_stats.active_connections == 0, timeout=5)
    summary = _run(server, prompts(100), out)
    assert summary.skipped == len(done)
    assert len(read_jsonl(out)) == 100


async def _arun(server: FakeServer, out: Path) -> BatchSummary:
    return await arun_batch(
        prompts(100), out, endpoint=server.url, model="fake-model", concurrency=4
    )


def test_pydantic_results_are_written_as_json(server: FakeServer, tmp_path: Path) -> None:
    """A pydantic response_format gives a parsed model, written as a JSON object."""
    pydantic = pytest.importorskip("pydantic")
    Ticket = pydantic.create_model("Ticket", label=(str, ...))
    server.responder = lambda r: Reply(content='{"label": "bug"}')
    out = tmp_path / "out.jsonl"
    _run(server, prompts(1), out, response_format=Ticket)
    assert read_jsonl(out)[0]["parsed"] == {"label": "bug"}


def test_importing_the_batch_package_stays_light() -> None:
    """import lmlink.batch pulls in neither rich nor sqlite3 nor asyncio."""
    code = "import sys, lmlink.batch; print(sorted(m for m in ('rich', 'sqlite3', 'asyncio') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_tasks_refuse_bad_arguments() -> None:
    """classify wants two distinct labels; summarize a positive word count."""
    with pytest.raises(lmlink.ConfigurationError):
        Task.classify(["only"])
    with pytest.raises(lmlink.ConfigurationError):
        Task.classify(["a", "a"])
    with pytest.raises(lmlink.ConfigurationError):
        Task.summarize(0)


def test_which_failures_stop_the_run() -> None:
    """Setup failures stop the run; a row's own bad option, a 404 for its own model, a timeout
    or a 429 do not."""
    plain = BatchItem("a", [{"role": "user", "content": "x"}])
    own = BatchItem("b", [{"role": "user", "content": "x"}], {"model": "m2"})
    refused = lmlink.APIConnectionError("refused", reason="refused")
    assert is_fatal(lmlink.ConfigurationError("bad"), plain)
    assert not is_fatal(lmlink.ConfigurationError("bad"), own)
    assert is_fatal(lmlink.AuthenticationError("401", status_code=401), plain)
    assert is_fatal(lmlink.NotFoundError("404", status_code=404), plain)
    assert not is_fatal(lmlink.NotFoundError("404", status_code=404), own)
    assert is_fatal(refused, plain)
    assert not is_fatal(lmlink.APIConnectionError("reset", reason="reset"), plain)
    assert not is_fatal(lmlink.APITimeoutError("slow", reason="timeout"), plain)
    assert not is_fatal(lmlink.RateLimitError("429", status_code=429), plain)


@pytest.mark.parametrize(
    ("exc", "overload"),
    [
        (lmlink.RateLimitError("429", status_code=429), True),
        (lmlink.OverloadedError("503", status_code=503), True),
        (lmlink.ModelLoadingError("loading", status_code=503), False),
        (lmlink.APITimeoutError("idle", phase="idle"), True),
        (lmlink.InternalServerError("504", status_code=504), True),
        (lmlink.BadRequestError("400", status_code=400), False),
    ],
    ids=["429", "503", "loading", "timeout", "504", "400"],
)
def test_which_failures_ask_for_less_concurrency(exc: lmlink.LMLinkError, overload: bool) -> None:
    """429, 503 (not loading), 504 and timeouts shrink the limit; the rest do not."""
    assert is_overload(exc) is overload
