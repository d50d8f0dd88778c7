"""Timing: interleaved medians of micro-models in-process (:func:`measure`), and of ONNX files in a
fresh ONNX Runtime process with one global thread pool (:func:`measure_onnx`); the argument checks
and hardware string every measurement shares (see :mod:`tas.deploy.latency` for why it is done this way).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...errors import TasError
from ..export import INPUT_NAME, ort_session
from .micro import Runnable

RUNTIMES = ("ort-cpu", "torch-cpu", "torch-cuda")

#: ``timer(runnable, input) -> seconds``: one timed call (see :func:`perf_timer`)
Timer = Callable[["Runnable", Any], float]


def perf_timer(runnable: Runnable, x: Any) -> float:
    """The default timer: wall-clock seconds of one call."""
    t0 = time.perf_counter()
    runnable(x)
    return time.perf_counter() - t0


def cuda_event_timer(event: Callable[..., Any] | None = None) -> Timer:
    """A timer for ``torch-cuda``: the GPU time between two CUDA events recorded around the call.

    The wall clock on the host would time the launches, not the kernels (they run asynchronously);
    the events are stamped on the GPU's stream, and ``elapsed_time`` (ms) between them is read once
    the end event has completed. ``event`` builds an event (default ``torch.cuda.Event``, with
    timing enabled); tests pass a fake one.
    """
    make = event or torch.cuda.Event

    def timer(runnable: Runnable, x: Any) -> float:
        start, end = make(enable_timing=True), make(enable_timing=True)
        start.record()
        runnable(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3

    timer.__name__ = "cuda_event"  # type: ignore[attr-defined]
    return timer


def spread(times: Sequence[float]) -> float:
    """How noisy repeated timings are: interquartile range over median (0 for fewer than 2)."""
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return float((q3 - q1) / med) if med > 0 else 0.0


def measure(runnables: Sequence[Runnable], inputs: Sequence[Any], repeats: int, warmup: int,
            timer: Timer | None = None, pre: int = 0, progress: Any = None) -> list[float]:
    """Median seconds of each runnable, measured interleaved (:func:`measure_stats` without the spreads)."""
    return measure_stats(runnables, inputs, repeats, warmup, timer, pre, progress)[0]


def measure_stats(runnables: Sequence[Runnable], inputs: Sequence[Any], repeats: int, warmup: int,
                  timer: Timer | None = None, pre: int = 0, progress: Any = None) -> tuple[list[float], list[float]]:
    """Median seconds and :func:`spread` of each runnable, measured interleaved.

    Every repeat visits all runnables once, round-robin, starting one further along each time;
    each visit makes ``pre`` untimed calls (through ``timer``, result ignored) and one timed call.
    The first ``warmup`` repeats are discarded.
    """
    timer = timer or perf_timer
    n = len(runnables)
    times: list[list[float]] = [[] for _ in range(n)]
    for r in range(warmup + repeats):
        for k in range(n):
            i = (r + k) % n
            for _ in range(pre):
                timer(runnables[i], inputs[i])
            t = float(timer(runnables[i], inputs[i]))
            if r >= warmup:
                times[i].append(t)
        if progress is not None:
            progress.update(1)
    return [float(statistics.median(t)) for t in times], [spread(t) for t in times]


def check_timing_args(runtime: str, batch: int, threads: int, repeats: int, warmup: int) -> None:
    if runtime not in RUNTIMES:
        raise TasError(f"unknown latency runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if runtime == "torch-cuda" and not torch.cuda.is_available():
        raise TasError("runtime torch-cuda needs a CUDA GPU, and torch.cuda.is_available() is False here "
                       "(use ort-cpu or torch-cpu)")
    for name, v, low in (("batch", batch, 1), ("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise TasError(f"latency {name} must be an integer >= {low}, got {v!r}")


def hardware_string(runtime: str = "ort-cpu") -> str:
    """CPU model (``/proc/cpuinfo``), torch version, and ONNX Runtime version / GPU name as they apply."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor")) and ":" in line:
                v = line.split(":", 1)[1].strip()
                if v and not v.isdigit():
                    cpu = v
                    break
    except OSError:
        pass
    parts = [f"cpu={cpu or platform.processor() or platform.machine()}", f"torch={torch.__version__}"]
    if runtime == "ort-cpu":
        import onnxruntime  # why: slow to import; only a hardware string for ONNX Runtime needs it

        parts.append(f"onnxruntime={onnxruntime.__version__}")
    if runtime == "torch-cuda" and torch.cuda.is_available():
        parts += [f"gpu={torch.cuda.get_device_name()}", f"cuda={torch.version.cuda}"]
    return "; ".join(parts)


#: The ONNX Runtime measurement, run in a fresh interpreter (only onnxruntime + numpy imported):
#: there it can give every session one *global* intra-op thread pool of ``threads`` threads.
#: With a pool per session (ORT's default), hundreds of sessions mean hundreds of worker threads
#: that spin after each run and fight over the cores: measured here with 300 micro-models, 74 s
#: and inflated medians against 0.5 s with the global pool (and 40 ms against ~1 ms per session).
_ORT_WORKER = r"""
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
job = json.load(open(sys.argv[1]))
shared = True
try:
    from onnxruntime.capi import _pybind_state as C
    C.set_global_thread_pool_sizes(int(job["threads"]), 1)
except Exception as e:
    shared = False
    print("note", "no global ONNX Runtime thread pool (%s); using one per session" % e, flush=True)
def session(path):
    o = ort.SessionOptions()
    if shared:
        o.use_per_session_threads = False
    else:
        o.intra_op_num_threads = int(job["threads"])
        o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=o, providers=["CPUExecutionProvider"])
def spread(t):
    if len(t) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(t, n=4, method="inclusive")
    m = statistics.median(t)
    return (q3 - q1) / m if m > 0 else 0.0
out, spreads = [], []
for c, chunk in enumerate(job["chunks"]):
    sessions = [session(it["path"]) for it in chunk]
    arrays, feeds = {}, []
    for it in chunk:
        shape = tuple(it["shape"])
        if shape not in arrays:
            arrays[shape] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        feeds.append({job["input_name"]: arrays[shape]})
    n, warmup, pre = len(sessions), int(job["warmup"]), int(job["pre"])
    times = [[] for _ in range(n)]
    for r in range(warmup + int(job["repeats"])):
        for k in range(n):
            i = (r + k) % n
            s, f = sessions[i], feeds[i]
            for _ in range(pre):
                s.run(None, f)
            t0 = time.perf_counter()
            s.run(None, f)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[i].append(dt)
        print("repeat", c, r, flush=True)
    out.append([statistics.median(t) for t in times])
    spreads.append([spread(t) for t in times])
    del sessions
with open(job["result"], "w") as f:
    json.dump({"medians": out, "spreads": spreads, "shared_pool": shared}, f)
"""


def measure_ort_subprocess(paths: list[list[Path]], shapes: list[list[tuple[int, ...]]], threads: int,
                            repeats: int, warmup: int, workdir: Path, bar: Any, pre: int = 0
                            ) -> tuple[list[list[float]], list[list[float]], bool]:
    """Median seconds and :func:`spread` per ONNX file, chunk by chunk, measured by
    :data:`_ORT_WORKER` (which repeats :func:`spread`: it imports nothing of tas) in a fresh process;
    and whether the worker shared one thread pool."""
    job = {"threads": threads, "repeats": repeats, "warmup": warmup, "pre": pre, "input_name": INPUT_NAME,
           "result": str(workdir / "result.json"),
           "chunks": [[{"path": str(p), "shape": list(sh)} for p, sh in zip(pc, sc)] for pc, sc in zip(paths, shapes)]}
    (workdir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    notes = []
    with open(workdir / "worker.err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _ORT_WORKER, str(workdir / "job.json")],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            for line in proc.stdout:
                if line.startswith("repeat") and bar is not None:
                    bar.update(1)
                elif line.startswith("note"):
                    notes.append(line[5:].strip())
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        last = [l for l in err.read().strip().splitlines() if l.strip()]
    if rc != 0:
        raise TasError(f"the ONNX Runtime latency worker failed (exit {rc}): {last[-1] if last else 'no message'}")
    result = json.loads((workdir / "result.json").read_text())
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return result["medians"], result["spreads"], bool(result["shared_pool"])


def measure_onnx(paths: Sequence[str | os.PathLike], input_size: Sequence[int], batch: int = 1, threads: int = 2,
                 repeats: int = 30, warmup: int = 5, warm_calls: int = 0) -> list[float]:
    """Median latency (ms) of whole ONNX models measured the way the tables are (fresh process, one
    global thread pool, interleaved, ``warm_calls`` untimed calls before each timed one), so a
    prediction and a measurement can be compared like for like (:func:`tas.deploy.latency.ort_latency` is
    this). With ``warm_calls=1`` cifar_resnet20 at 32 px measured 1.25-2x lower than with 0.)"""
    check_timing_args("ort-cpu", batch, threads, repeats, warmup)
    shape = (int(batch), *[int(s) for s in input_size])
    with tempfile.TemporaryDirectory(prefix="tas-latency-") as tmp:
        med, _, _ = measure_ort_subprocess([[Path(p) for p in paths]], [[shape] * len(paths)], threads, repeats, warmup,
                                         Path(tmp), None, pre=warm_calls)
    return [m * 1e3 for m in med[0]]


def ort_latency(paths: Sequence[str | os.PathLike], input_size: Sequence[int], batch: int, repeats: int = 30,
                warmup: int = 5, threads: int = 2) -> list[float]:
    """Median ONNX Runtime CPU latency (ms) of each model, measured interleaved.

    Every repeat runs each model once, round-robin, starting one model further along each time, so
    slow-downs of the machine are shared by all models rather than landing on whichever was timed
    during them. The models run in a fresh process sharing one ONNX Runtime thread pool
    (:func:`measure_onnx`, also how latency tables and predictions are measured): with
    a pool per session, each session's threads keep spinning after its run and slow down the next
    model, which made interleaved timings of near-identical models differ by up to 2x here.
    """
    if not paths:
        return []
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise TasError(f"need repeats >= 1, warmup >= 0, batch >= 1, threads >= 1 "
                       f"(got {repeats}, {warmup}, {batch}, {threads})")
    for p in paths:
        ort_session(p, 1)  # a clear error for a file ONNX Runtime cannot load, before the worker starts
    return measure_onnx(paths, input_size, batch=batch, threads=threads, repeats=repeats, warmup=warmup)
