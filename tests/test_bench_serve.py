"""bench/serve.py end to end on tiny models (two "sizes", every table row), and the load
generator's failure counting. Correctness and format only: speed is measured in bench/."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import torch
import uvicorn

from adapters.backbone import Backbone
from bench import serve, serve_table
from bench.closed_loop import all_of, closed_loop
from client import ConnectionFailed, ServerError
from client.api import KEEPALIVE_EXPIRY_S
from tests.tiny import tiny_config, tiny_processor

NUMBER = re.compile(r"^\d+(\.\d+)?x?$")


def tiny(hidden: int):
    """A size for serve.main: work dir -> a tiny random backbone of this width."""
    def build(work: Path) -> Path:
        processor = tiny_processor()
        torch.manual_seed(0)
        return Backbone.from_config(tiny_config(processor.tokenizer, hidden=hidden), processor).save_pretrained(
            work / f"tiny-{hidden}")
    return build


def test_two_sizes_one_table_with_every_row(capsys):
    levels = ["caption", "ceiling", "fanout", "cache"]
    results = serve.main(["--sizes", "small", "base", "--levels", *levels, "--concurrency", "1", "4",
                          "--requests", "8", "4", "--baseline-requests", "4", "--time-budget", "20",
                          "--max-new-tokens", "3", "--max-batch-size", "4"],
                         backbones={"small": tiny(32), "base": tiny(48)})
    assert list(results) == ["small", "base"]
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    head, body = lines[0], [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert [c.strip() for c in head.strip("|").split("|")] == ["row", "clients"] + [
        f"{size} {col}" for size in ("small", "base") for col in serve_table.COLUMNS]
    expected = [(label, clients) for label, clients, _ in serve_table.rows(levels, [1, 4], 4, 4)]
    assert [(row[0], row[1]) for row in body] == expected
    assert len(expected) == 1 + 2 + 1 + 2 + 4 + 2  # ceiling, server x2, generate, server/generate x2, fan-out, cache
    for row in body:
        for group in (row[2:8], row[8:14]):  # per s, p50, p99, ratio, n, failed of each size
            rate, p50, p99, ratio, n, failed = group
            if row[0].startswith("server / transformers"):
                assert NUMBER.match(ratio) and ratio.endswith("x") and not rate, row
                continue
            assert all(NUMBER.match(x) for x in (rate, p50, p99, n)), row
            assert failed == "0" and int(n) > 0, row
            assert bool(NUMBER.match(ratio)) == ("ratio:" in row[0]), row
    assert out.count("load average") >= 3  # the run's start, and each size's start and end


def test_caption_schedulers_side_by_side(capsys):
    results = serve.main(["--sizes", "small", "--levels", "caption", "--concurrency", "1", "4", "--requests", "8",
                          "--baseline-requests", "4", "--time-budget", "20", "--max-new-tokens", "3",
                          "--max-batch-size", "4", "--caption-schedulers", "batch", "continuous"],
                         backbones={"small": tiny(32)})
    small = results["small"]
    assert small["server"] == small["schedulers"]["batch"] and set(small["schedulers"]["continuous"]) == {1, 4}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    expected = serve_table.rows(["caption"], [1, 4], 4, 4, ["batch", "continuous"])
    assert [(row[0], row[1]) for row in body] == [(label, clients) for label, clients, _ in expected]
    for row in body:
        if row[0].startswith("continuous / batch"):
            assert all(NUMBER.match(x) and x.endswith("x") for x in row[2:5]), row
        elif "scheduler, mixed" in row[0]:
            assert row[7] == "0" and int(row[6]) > 0, row  # none failed


def test_a_per_size_knob_takes_one_value_or_one_per_size():
    with pytest.raises(SystemExit):
        serve.main(["--sizes", "small", "base", "--requests", "1", "2", "3"], backbones={})


def test_failed_requests_are_counted_and_the_level_goes_on():
    async def unit(c, i):
        if i % 3 == 0:
            raise ConnectionFailed("POST /caption: ReadError: ")
        if i % 3 == 1:  # a unit of 3 requests, 2 of which fail
            async def ok():
                return 1

            async def bad():
                raise ServerError("boom", status=500)
            await all_of(ok(), bad(), bad())

    r = asyncio.run(closed_loop("http://127.0.0.1:9", 4, 9, 60, unit))
    assert r["n"] == 3 and r["failed"] == 3 + 2 * 3
    assert r["errors"]["ConnectionFailed: POST /caption: ReadError: "] == 3

    async def bug(c, i):
        raise ValueError("a bug in the bench")

    with pytest.raises(ValueError):
        asyncio.run(closed_loop("http://127.0.0.1:9", 2, 4, 60, bug))


def test_the_client_drops_idle_connections_before_the_server_closes_them():
    # equal timeouts (httpx's and uvicorn's defaults, 5 s) let a request meet the server closing its connection
    assert KEEPALIVE_EXPIRY_S < uvicorn.Config(app=None).timeout_keep_alive
