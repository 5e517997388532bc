"""--shard K/N and run_batch(shard=...): a stable split of the ids by hash, N runs covering
every id exactly once, even after the input is edited."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import lmlink
from batch_helpers import run_cli, write_jsonl
from lmlink import ConfigurationError
from lmlink.batch._shard import parse_shard, shard_of, take_shard
from lmlink.testing import FakeServer, RecordedRequest


def _ids(path: Path) -> list[str]:
    """The ids of the result lines (a line without an id, like a header, is not a result)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line["id"] for line in lines if "id" in line]


def _echo(req: RecordedRequest) -> str:
    return str(req.json["messages"][-1]["content"]).upper()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1/1", (1, 1)), (" 2/3 ", (2, 3)), ((4, 4), (4, 4)), ([1, 7], (1, 7)), (None, None)],
    ids=["1of1", "spaces", "tuple", "list", "none"],
)
def test_parse_shard_accepts(given: Any, expected: Any) -> None:
    """K/N strings and (K, N) pairs with 1 <= K <= N are accepted."""
    assert parse_shard(given) == expected


@pytest.mark.parametrize(
    "given", ["0/3", "4/3", "1/0", "1", "a/b", "1/2/3", "-1/2", (0, 1), (True, 1), 2.5]
)
def test_parse_shard_refuses(given: Any) -> None:
    """Anything else is a ConfigurationError that shows the form wanted."""
    with pytest.raises(ConfigurationError, match="K/N"):
        parse_shard(given)


def test_shard_of_is_a_fixed_function_of_the_id() -> None:
    """The split does not depend on the process (no PYTHONHASHSEED) nor on the order: these
    values are part of the file format of a sharded run, and must never change."""
    assert [shard_of(f"id{i}", 7) for i in range(8)] == [3, 6, 6, 1, 7, 1, 3, 1]
    assert shard_of("ticket-000042", 1000) == 578
    code = "from lmlink.batch._shard import shard_of; print(shard_of('ticket-000042', 1000))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == "578"


def test_shards_are_balanced_and_disjoint() -> None:
    """3,000 ids over 3 shards: every id in exactly one, each shard about a third."""
    ids = [f"row-{i}" for i in range(3000)]
    parts = [take_shard(ids, (k, 3), key=str) for k in (1, 2, 3)]
    assert sorted(i for p in parts for i in p) == sorted(ids)
    assert all(850 < len(p) < 1150 for p in parts)
    assert Counter(shard_of(i, 3) for i in ids).keys() == {1, 2, 3}


def test_n_runs_cover_every_id_once_even_after_editing_the_input(tmp_path: Path) -> None:
    """Three sharded runs cover the input exactly once; after rows are removed, added and
    reordered, re-running the same three commands sends only the new ids, each to the
    shard that owns it, and no id appears in two outputs."""
    rows = [{"id": f"t{i}", "prompt": f"p{i}"} for i in range(60)]
    outs = [tmp_path / f"out{k}.jsonl" for k in (1, 2, 3)]
    with FakeServer(responder=_echo) as srv:
        for k, out in enumerate(outs, 1):
            summary = lmlink.run_batch(rows, out, endpoint=srv.url, model="m", shard=(k, 3))
            assert summary.complete
        seen = [_ids(out) for out in outs]
        assert sorted(i for ids in seen for i in ids) == sorted(r["id"] for r in rows)
        for k, ids in enumerate(seen, 1):
            assert ids
            assert {shard_of(i, 3) for i in ids} == {k}
        sent_before = len(srv.requests)
        assert sent_before == 60

        edited = [r for r in rows if r["id"] not in {"t3", "t17", "t40"}]
        edited += [{"id": f"new{i}", "prompt": f"n{i}"} for i in range(12)]
        random.Random(5).shuffle(edited)
        for k, out in enumerate(outs, 1):
            lmlink.run_batch(edited, out, endpoint=srv.url, model="m", shard=f"{k}/3")
        assert len(srv.requests) - sent_before == 12
    seen = [_ids(out) for out in outs]
    every = [i for ids in seen for i in ids]
    for out in outs:  # the join the README shows: every line after the header is a result
        first, *rest = out.read_text(encoding="utf-8").splitlines()
        assert "id" not in json.loads(first)
        assert all("id" in json.loads(line) for line in rest)
    assert len(every) == len(set(every))
    assert set(every) >= {r["id"] for r in edited}
    for k, ids in enumerate(seen, 1):
        assert {shard_of(i, 3) for i in ids} == {k}


def test_cli_shard_for_batch_and_presets(tmp_path: Path) -> None:
    """`lmlink batch --shard` and `lmlink classify --shard` run only their shard; a bad
    --shard is refused with exit 2 before anything is sent."""
    rows = [{"id": f"r{i}", "prompt": f"text {i}"} for i in range(20)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with FakeServer(responder=lambda req: '{"label": "a"}') as srv:
        outs = []
        for k in (1, 2):
            out = tmp_path / f"part{k}.jsonl"
            done = run_cli(
                [
                    *("classify", str(src), "-o", str(out), "-e", srv.url, "-m", "m"),
                    *("--labels", "a,b", "--progress", "off", "--shard", f"{k}/2"),
                ]
            )
            assert done.returncode == 0, done.stderr
            assert f"(shard {k}/2)" in done.stderr
            outs.append(_ids(out))
        assert sorted(outs[0] + outs[1]) == sorted(r["id"] for r in rows)
        assert not set(outs[0]) & set(outs[1])
        sent = len(srv.requests)
        bad = run_cli(
            [
                *("batch", str(src), "-o", str(tmp_path / "x.jsonl"), "-e", srv.url),
                *("-m", "m", "--shard", "3/2"),
            ]
        )
        assert bad.returncode == 2
        assert "--shard" in bad.stderr
        assert "K/N" in bad.stderr
        assert len(srv.requests) == sent
        assert not (tmp_path / "x.jsonl").exists()


def test_the_shard_is_one_of_the_output_settings(tmp_path: Path) -> None:
    """The header records the shard; adding another shard's answers to an output is refused
    with a message naming the shard, and nothing is sent."""
    from lmlink.batch import SettingsChangedError

    rows = [{"id": f"t{i}", "prompt": f"p{i}"} for i in range(30)]
    out = tmp_path / "out.jsonl"
    with FakeServer(responder=_echo) as srv:
        lmlink.run_batch(rows, out, endpoint=srv.url, model="m", shard=(1, 2))
        header = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
        assert "id" not in header
        assert header["settings"]["shard"] == "1/2"
        sent = len(srv.requests)
        with pytest.raises(SettingsChangedError, match=r"shard '1/2' -> '2/2'"):
            lmlink.run_batch(rows, out, endpoint=srv.url, model="m", shard=(2, 2))
        with pytest.raises(SettingsChangedError, match="shard '1/2' -> none"):
            lmlink.run_batch(rows, out, endpoint=srv.url, model="m")
        assert len(srv.requests) == sent
        again = lmlink.run_batch(rows, out, endpoint=srv.url, model="m", shard="1/2")
        assert again.complete
        assert len(srv.requests) == sent
