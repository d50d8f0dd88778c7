"""Run a :class:`compare.Bench`'s cells in worker processes, several at a time (``--jobs N``).

The networks these benchmarks train are small: one process keeps a GPU mostly idle (each step is
a few hundred kernel launches from one Python thread), and on a many-core CPU one process runs on
``--threads`` cores. So cells run in ``N`` spawned worker processes, each with its own copy of the
bench (built from the same ``args``: same output directory, same cache), while the parent alone
records results and writes ``results.json``, one cell at a time as they finish, so a killed run
resumes as the serial one does.

A cell waits for the cell it builds on (:meth:`compare.Bench.depends_on`, e.g. allocation.py's
borrowers on their seed's ``tas`` search); cells start in the order given, so a run stopped early
holds the first seeds' complete sets.
"""
from __future__ import annotations

import copy
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable

__all__ = ["open_pool", "run_in_pool"]

_BENCH: Any = None  # the worker process's bench


def _start_worker(bench_cls: type, args) -> None:
    global _BENCH
    args = copy.copy(args)
    args.fresh = False  # a worker must never wipe the output the parent has started
    bench_cls.setup_worker(args)
    _BENCH = bench_cls(args)


def _call(method: str, *a) -> Any:
    return getattr(_BENCH, method)(*a)


def _try_cell(cell: tuple, skip: tuple[type[BaseException], ...]) -> tuple[str, Any]:
    # a skip is turned into a string here: exception classes with their own __init__ may not unpickle
    try:
        return "done", _BENCH.cell(*cell)
    except skip as e:
        return "skipped", str(e)


def open_pool(bench, jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned workers, each holding a bench like ``bench`` (spawn, not fork: the parent
    may already hold a CUDA context, which a forked child cannot use)."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(type(bench), bench.args))


def call_in_pool(pool: ProcessPoolExecutor, method: str, *a) -> Future:
    """Submit ``bench.<method>(*a)`` to a worker."""
    return pool.submit(_call, method, *a)


def run_in_pool(bench, pool: ProcessPoolExecutor, todo: list[tuple[str, float, int, str]], start: float,
                describe: Callable[[dict], str], skip: tuple[type[BaseException], ...] = ()) -> None:
    """Run the cells ``todo`` (none cached) in ``pool``, recording each as it finishes
    (:meth:`compare.Bench.record`, as the serial loop does). A cell whose
    :meth:`depends_on` key is still to run waits for it; one whose dependency failed is not run."""
    keys = {c: bench.key(*c) for c in todo}
    waiting, running, failed = list(todo), {}, set()
    n = len(todo)
    while waiting or running:
        for c in list(waiting):
            dep = bench.depends_on(*c)
            if dep in failed:
                waiting.remove(c)
                failed.add(keys[c])
            elif dep is None or dep in bench.results["cells"] or dep not in keys.values():
                waiting.remove(c)
                running[pool.submit(_try_cell, c, skip)] = (c, time.perf_counter())
        if not running:  # only a bug can leave cells waiting on nothing: fail rather than hang
            raise RuntimeError(f"cells waiting for cells that will never run: {[keys[c] for c in waiting]}")
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            c, t0 = running.pop(fut)
            # anything but a skip re-raises here and stops the run, as in the serial loop
            if bench.record(keys[c], fut.result(), f"{n - len(waiting) - len(running)}/{n}", describe,
                            time.perf_counter() - t0, start, " in a worker"):
                failed.add(keys[c])
