"""benchmarks/cellpool.py: a bench's cells in worker processes, a follower after the cell it builds on."""
import argparse
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cellpool  # noqa: E402
import compare  # noqa: E402


class Skip(Exception):
    pass


class FakeBench:
    """Cells that leave a file when they finish; a ``follow`` cell reports whether its ``tas`` cell's file
    was there when it started. ``tas`` of seed 1 is skipped; ``boom`` fails."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.root = args, Path(args.output)
        self.results = {"cells": {}, "skipped": {}}
        self.saves = 0

    @classmethod
    def setup_worker(cls, args: argparse.Namespace) -> None:
        os.environ["FAKE_WORKER"] = "1"

    @staticmethod
    def key(model: str, ratio: float, seed: int, method: str) -> str:
        return f"{model}/r{ratio}/s{seed}/{method}"

    def depends_on(self, model: str, ratio: float, seed: int, method: str) -> str | None:
        return self.key(model, ratio, seed, "tas") if method == "follow" else None

    record = compare.Bench.record  # the parent's bookkeeping is the real one

    def save(self) -> None:
        self.saves += 1

    def cell(self, model: str, ratio: float, seed: int, method: str) -> dict:
        if method == "boom":
            raise ValueError("boom")
        if method == "tas" and seed == 1:
            raise Skip("no such network")
        saw = (self.root / f"tas{seed}").exists()
        if method == "tas":
            time.sleep(1.0)  # long enough that an unguarded follower would start before it ends
            (self.root / f"tas{seed}").write_text("")
        return {"method": method, "seed": seed, "saw_tas": saw, "worker": os.environ.get("FAKE_WORKER"),
                "pid": os.getpid()}


def run(tmp_path: Path, todo: list) -> FakeBench:
    bench = FakeBench(argparse.Namespace(output=str(tmp_path), fresh=True))
    pool = cellpool.open_pool(bench, 2)
    try:
        cellpool.run_in_pool(bench, pool, todo, time.perf_counter(), lambda res: res["method"], skip=(Skip,))
    finally:
        pool.shutdown(cancel_futures=True)
    return bench


def test_followers_wait_skips_are_recorded_and_propagate(tmp_path):
    todo = [("m", 0.25, 0, "tas"), ("m", 0.25, 0, "follow"), ("m", 0.25, 0, "uniform"),
            ("m", 0.25, 1, "tas"), ("m", 0.25, 1, "follow")]
    bench = run(tmp_path, todo)
    cells = bench.results["cells"]
    assert sorted(cells) == ["m/r0.25/s0/follow", "m/r0.25/s0/tas", "m/r0.25/s0/uniform"]
    assert cells["m/r0.25/s0/follow"]["saw_tas"]  # started only once its tas cell had finished
    assert all(c["worker"] == "1" and c["pid"] != os.getpid() for c in cells.values())
    # the skipped search is recorded with its reason, and the cell built on it never runs
    assert bench.results["skipped"] == {"m/r0.25/s1/tas": "no such network"}
    assert "m/r0.25/s1/follow" not in cells
    assert bench.saves == 4  # results written as each cell ends, not once at the end


def test_a_failing_cell_stops_the_run(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        run(tmp_path, [("m", 0.5, 0, "boom")])
