"""Batches of any size in bounded memory: streamed input, a compact record of what is done,
bounded statistics, and group commit that counts a result only once it is written."""

from __future__ import annotations

import asyncio
import json
import random
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmlink
from batch_helpers import read_jsonl, run_cli, write_jsonl
from lmlink.batch import BatchInputError, Progress, Task, run_batch
from lmlink.batch._commit import GroupCommit
from lmlink.batch._doneset import DigestSet, DoneSet, digest, repeated
from lmlink.batch._header import header_line, make_settings
from lmlink.batch._journal import Journal, encode_record
from lmlink.batch._source import scan_items
from lmlink.batch._stats import Histogram
from lmlink.testing import FakeServer, Reply


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def _rows(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"id": f"row-{i:07d}", "prompt": f"question number {i} " + "x" * 60}


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """What ``fn`` returns and the peak of memory it allocated (bytes)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_the_input_is_scanned_without_keeping_its_rows(tmp_path: Path) -> None:
    """Checking and counting rows keeps 8 bytes per id, not the rows: going from 40,000 to
    80,000 rows (about 100 bytes of JSON each) adds under 40 bytes of peak memory per row;
    reading them again yields every one, in order."""
    small = write_jsonl(tmp_path / "small.jsonl", _rows(40_000))
    large = write_jsonl(tmp_path / "large.jsonl", _rows(80_000))
    _, peak_small = _peak(lambda: scan_items(small))
    source, peak_large = _peak(lambda: scan_items(large))
    assert source.count == 80_000
    assert (peak_large - peak_small) / 40_000 < 40
    assert peak_large < 8_000_000  # the rows as dicts would take ~50 MB
    seen = 0
    for n, item in enumerate(source):
        assert item.id == f"row-{n:07d}"
        assert item.line == n + 1
        seen += 1
    assert seen == 80_000
    assert "row-0079999" in source.ids
    assert "row-0080000" not in source.ids


def test_a_problem_on_the_last_line_of_a_large_input_stops_everything(tmp_path: Path) -> None:
    """Every problem is found before anything is sent, even on line 40,001."""
    rows = [*_rows(40_000), {"id": "late", "prompt": 5}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with FakeServer() as server:
        with pytest.raises(BatchInputError) as info:
            run_batch(path, tmp_path / "out.jsonl", endpoint=server.url, model="fake-model")
        assert server.stats.chat_requests == 0
    assert [str(p) for p in info.value.problems] == [
        'line 40001: "prompt" must be a string, not a number (5)'
    ]
    assert not (tmp_path / "out.jsonl").exists()


def test_duplicates_far_apart_in_a_large_input_are_found_with_both_lines(tmp_path: Path) -> None:
    """Ids repeated tens of thousands of lines apart are reported with their first line;
    other problems on a duplicate's line are not reported twice."""
    rows = list(_rows(50_000))
    rows[49_990] = {"id": "row-0000002", "prompt": 1}  # a duplicate, and a bad prompt
    rows[30_000] = dict(rows[7])
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(BatchInputError) as info:
        scan_items(path)
    assert [str(p) for p in info.value.problems] == [
        "line 30001: duplicate id 'row-0000007' (first on line 8)",
        "line 49991: duplicate id 'row-0000002' (first on line 3)",
    ]


def test_stdin_is_read_twice_through_a_copy(tmp_path: Path) -> None:
    """Input on stdin ("-") is checked, then sent: every row gets its line."""
    data = "".join(json.dumps(r) + "\n" for r in _rows(300))
    with FakeServer() as server:
        import subprocess

        from batch_helpers import clean_env, lmlink_command

        out = tmp_path / "out.jsonl"
        done = subprocess.run(
            [*lmlink_command(), "batch", "-", "-o", str(out), "-e", server.url, "-m", "m"],
            input=data,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == [r["id"] for r in _rows(300)]


def _journal_file(path: Path, n: int, every_error: int = 7) -> None:
    """An output of ``n`` results (every ``every_error``-th an error) after the header a
    plain run on "fake-model" writes."""
    task = Task()
    settings = make_settings(
        task=task.name,
        instructions=task.instructions,
        template=None,
        system=None,
        model="fake-model",
        params=task.params,
    )
    with path.open("wb") as f:
        f.write(header_line(settings))
        for i in range(n):
            if i % every_error == 0:
                rec: dict[str, Any] = {"id": f"row-{i:07d}", "error": {"type": "X"}}
            else:
                rec = {"id": f"row-{i:07d}", "content": "an answer " * 8, "latency_s": 0.5}
            f.write(encode_record(rec))


def test_resuming_a_large_journal_keeps_eight_bytes_per_id(tmp_path: Path) -> None:
    """Opening a 120,000-line output (header record first) knows every id and which
    failed, and holds them in about 8 bytes each."""
    out = tmp_path / "out.jsonl"
    _journal_file(out, 120_000)
    journal, peak = _peak(lambda: Journal.open(out))
    with journal:
        done = journal.state.done
        assert len(done) == 120_000
        assert "row-0000000" in done
        assert done.failed("row-0000007")
        assert not done.failed("row-0000008")
        assert "row-0120000" not in done
        assert done.nbytes == 8 * 120_000
    assert peak < 3_000_000 + 24 * 120_000


def test_resuming_a_finished_large_output_sends_nothing(tmp_path: Path) -> None:
    """A finished 30,000-item output: the run skips every id and sends no request."""
    src = write_jsonl(tmp_path / "in.jsonl", _rows(30_000))
    out = tmp_path / "out.jsonl"
    _journal_file(out, 30_000, every_error=10**9)
    with FakeServer() as server:
        summary = run_batch(src, out, endpoint=server.url, model="fake-model")
        assert server.stats.chat_requests == 0
    assert (summary.total, summary.skipped, summary.ok, summary.complete) == (
        30_000,
        30_000,
        0,
        True,
    )


def test_retry_errors_on_a_large_output_redoes_only_the_errors(tmp_path: Path) -> None:
    """--retry-errors on 14,000 lines, every 7th an error: exactly those are sent again,
    and the file ends with one line per id."""
    src = write_jsonl(tmp_path / "in.jsonl", _rows(14_000))
    out = tmp_path / "out.jsonl"
    _journal_file(out, 14_000)
    with FakeServer() as server:
        summary = run_batch(
            src, out, endpoint=server.url, model="fake-model", retry_errors=True, stream=False
        )
        assert server.stats.chat_requests == 2_000
    assert (summary.retried, summary.ok, summary.skipped) == (2_000, 2_000, 12_000)
    lines = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert len(lines) == 14_000
    assert len({r["id"] for r in lines}) == 14_000
    assert not [r for r in lines if "error" in r]


def test_progress_never_counts_a_line_that_is_not_in_the_file(tmp_path: Path) -> None:
    """Group commit: whenever on_progress says n are done, the file holds at least n lines
    (a result counts once the write and fsync covering it have returned)."""
    out = tmp_path / "out.jsonl"
    checks: list[tuple[int, int]] = []

    def check(p: Progress) -> None:
        lines = out.read_bytes().count(b'{"id":') if out.exists() else 0  # not the header
        checks.append((p.done, lines))

    with FakeServer() as server:
        server.responder = lambda r: Reply(content="ok", delay=0.002)
        summary = run_batch(
            list(_rows(400)),
            out,
            endpoint=server.url,
            model="fake-model",
            concurrency=32,
            on_progress=check,
        )
    assert summary.ok == 400
    assert all(done <= lines for done, lines in checks)
    assert checks[-1] == (400, 400)


def test_group_commit_writes_many_lines_per_fsync(tmp_path: Path) -> None:
    """Lines handed in while the flusher is busy go out together; every mark is
    committed exactly once, after its line is in the file."""
    out = tmp_path / "out.jsonl"
    committed: list[Any] = []

    async def main() -> GroupCommit:
        with Journal.open(out) as journal:

            def on_commit(marks: list[Any]) -> None:
                text = out.read_text()
                assert all(f'"id":"{m}"' in text for m in marks)
                committed.extend(marks)

            commit = GroupCommit(journal, on_commit)
            flusher = asyncio.ensure_future(commit.run())
            for i in range(500):
                commit.add(encode_record({"id": f"r{i}", "content": "x"}), f"r{i}")
                if i % 50 == 0:
                    await asyncio.sleep(0)
            commit.add(encode_record({"id": "last", "content": "x"}), "last")
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            commit.finish()
            return commit

    commit = asyncio.run(main())
    assert committed == [*(f"r{i}" for i in range(500)), "last"]
    assert 1 <= commit.groups < 100
    assert len(read_jsonl(out)) == 501


def test_digest_sets_find_members_and_repeats() -> None:
    """A DigestSet answers membership for ids and digests; repeats are found by sorting."""
    rng = random.Random(7)
    keys = [f"k{rng.random()}" for _ in range(70_000)]  # more than one sorted run
    ids = DigestSet.of(digest(k) for k in keys)
    assert len(ids) == 70_000
    assert all(k in ids for k in keys[::997])
    assert "absent" not in ids
    assert 3.5 not in ids
    from array import array

    values = array("Q", [digest(k) for k in [*keys, keys[5], keys[69_000], keys[5]]])
    assert sorted(repeated(values)) == sorted({digest(keys[5]), digest(keys[69_000])})


def test_done_set_counts_an_answered_id_as_done() -> None:
    """An id with an answer and an error line is done and not failed."""
    done = DoneSet.of(ok=[digest("a")], errors=[digest("a"), digest("b"), digest("b")])
    assert done == {"a": False, "b": True}
    assert len(done) == 2
    assert done.without_errors(DigestSet.of([digest("b")])) == {"a": False}


def test_histogram_percentiles_are_within_one_percent() -> None:
    """On 100,000 values spread over five decades, p50/p95/p99 are within 1 % of the exact
    nearest-rank value, with a few hundred buckets; count and mean are exact."""
    rng = random.Random(11)
    values = [10 ** rng.uniform(-4, 1) for _ in range(100_000)]
    h = Histogram()
    for v in values:
        h.add(v)
    ordered = sorted(values)
    for q in (1, 50, 95, 99, 100):
        exact = ordered[max(0, -(-q * len(values) // 100) - 1)]
        got = h.percentile(q)
        assert got is not None
        assert abs(got - exact) <= 0.0101 * exact, q
    assert h.count == 100_000
    assert h.mean == pytest.approx(sum(values) / len(values))
    assert len(h) < 700
    assert Histogram().percentile(50) is None


def test_the_cli_reports_the_limit_range(tmp_path: Path) -> None:
    """The summary says where the adaptive limit went and settled; 'auto' is accepted and
    a bad value is refused."""
    src = write_jsonl(tmp_path / "in.jsonl", _rows(200))
    with FakeServer() as server:
        done = run_cli(
            [
                "batch",
                str(src),
                "-o",
                str(tmp_path / "o.jsonl"),
                "-e",
                server.url,
                "-m",
                "m",
                "--concurrency",
                "auto",
                "--progress",
                "lines",
            ]
        )
    assert done.returncode == 0, done.stderr
    assert "concurrency 1-" in done.stderr
    assert "settled at" in done.stderr
    assert "at most 1,024" in done.stderr
    bad = run_cli(["batch", str(src), "-o", str(tmp_path / "p.jsonl"), "-c", "lots"])
    assert bad.returncode == 2
    assert "'lots' is not 'auto' or an integer" in bad.stderr
