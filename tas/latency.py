"""Latency look-up tables and the differentiable expected latency of a supernet (latency-aware TAS).

FLOPs do not predict latency (``ALGORITHMS.md`` §5: odd widths can be slower than wider ones), so
a latency budget needs measurements. :func:`build_latency_table` times, for every prunable conv and
linear layer of a supernet's model, a tiny single-layer network (conv + BN + ReLU with that layer's
kernel, stride, padding, groups and input H×W; a linear layer alone) at every point of the layer's
width grid:

* a conv whose input and output groups are both searched: a 2-D grid, input × output candidates;
* one side fixed (the image, an SE bottleneck, the classes): a 1-D grid over the other side;
* depthwise (input and output are one group): a 1-D grid over that group;
* both sides fixed: one measurement (it still counts only while its block is kept).

Everything else the network does (residual adds, pooling, activations between layers, session
start) is one fixed **overhead**, measured once: the whole original model's latency minus the sum
of its layers' full-width entries (clamped at 0 when the layers sum to more; the table says so).

Measurement (:func:`measure`): every repeat visits *all* micro-models round-robin, starting one
further along each time, so whatever else the machine does slows every grid point alike; an entry
is the median over repeats minus the median of an empty model's call (the per-call cost a layer
inside a network does not pay). Each timed call comes straight after other models' calls
(``warm_calls=0``): its weights are not in cache, as inside a network bigger than the cache.
Measured here (ORT, 2 cores shared with other jobs): warm calls (``warm_calls=1``) make resnet18's
layers at 64 px sum to 2.2 ms against 7.3 ms for the whole network, leaving a 5 ms "fixed" overhead
that then dominates every small architecture's prediction (the smallest predicted at 0.71 of the
full latency, measured at 0.02-0.1); cold calls give 3.1 vs 3.7 ms and the smallest at 0.21. For
cifar_resnet20 (1 MB of weights) both work (rank correlation with measured latency 0.98-1.0).

Runtimes: ``ort-cpu`` (ONNX Runtime with the session settings of :func:`tas.export.ort_latency`;
each micro-model is written as the ONNX nodes the TorchScript exporter produces for it in eval mode,
``Conv`` with the BN folded in + ``Relu`` (``Gemm`` for a linear layer), built directly with
``onnx.helper``: ~2 ms each instead of ~70 ms through the exporter; the whole model is exported like
:func:`tas.export.export_onnx` does. The timing runs in a fresh interpreter where all sessions share
one global intra-op pool of ``threads`` threads: with ORT's default pool per session, hundreds of
sessions spin hundreds of threads against each other, 100x slower and with inflated medians),
``torch-cpu`` (eager, ``torch.set_num_threads(threads)``) and ``torch-cuda`` (synchronised).
An injected ``timer`` always runs in-process (for ``ort-cpu`` with one pool per session).

Tables are cached as JSON (:func:`load_or_build`) under ``~/.cache/tas/latency``, keyed by the model
(name, kwargs, a fingerprint of its layer graph), input size, runtime, batch, threads and a hardware
string (CPU model, torch/ORT versions, GPU name).

Cost (:class:`LatencyTable`): ``expected(supernet)`` is, per layer, the joint expectation
``Σ_ij p_in(i)·p_out(j)·T[i, j]`` over the table values (groups are independent, so the joint
distribution is the product), times the probability its block is kept, plus the overhead; it is
differentiable w.r.t. α and β and equals ``exact`` at one-hot distributions. A width between grid
points is linearly interpolated (a supernet whose candidates are a subset of the grid, e.g. after
:func:`aligned_candidates`, uses the grid values exactly).

Command line::

    python -m tas.latency build --model cifar_resnet20 --input-size 3 32 32 --runtime ort-cpu --batch 1
"""
from __future__ import annotations

import argparse
import bisect
import copy
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import CheckpointError, TasError

__all__ = ["RUNTIMES", "DEFAULT_CACHE_DIR", "MicroSpec", "Runnable", "LayerEntry", "LatencyTable",
           "build_latency_table", "load_or_build", "cache_key", "cache_path", "hardware_string",
           "aligned_candidates", "measure", "measure_onnx", "perf_timer", "main"]

RUNTIMES = ("ort-cpu", "torch-cpu", "torch-cuda")
DEFAULT_CACHE_DIR = "~/.cache/tas/latency"
FORMAT_VERSION = 1
#: ONNX opset / IR version of the micro-models (ONNX Runtime 1.2x reads IR 10)
_OPSET, _IR_VERSION = 18, 10
#: parameters (bytes) of the micro-models alive at once; more are measured in several chunks
_CHUNK_BYTES = 256 * 2**20

#: ``timer(runnable, input) -> seconds``: one timed call (see :func:`perf_timer`)
Timer = Callable[["Runnable", Any], float]


# ---------------------------------------------------------------------------------------------
# micro-models
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MicroSpec:
    """What one timed model is.

    ``kind``: ``conv`` (conv [+ BN] + ReLU), ``linear``, ``model`` (the whole original network;
    ``c_in``/``in_hw`` are its input) or ``null`` (an empty model: the per-call cost).
    """

    kind: str
    layer: str | None = None
    c_in: int = 1
    c_out: int = 1
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    bn: bool = False
    in_hw: tuple[int, ...] = ()
    batch: int = 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind in ("linear", "null"):
            return (self.batch, self.c_in)
        return (self.batch, self.c_in, *self.in_hw)

    @property
    def weight_bytes(self) -> int:
        if self.kind == "conv":
            return 4 * self.c_out * (self.c_in // self.groups) * math.prod(self.kernel)
        if self.kind == "linear":
            return 4 * self.c_in * self.c_out
        return 0


class Runnable:
    """What a timer is handed: ``spec`` (a :class:`MicroSpec`), ``model`` (an ORT session or an
    ``nn.Module``) and ``__call__(input)``, one complete run (CUDA runs are synchronised)."""

    def __init__(self, spec: MicroSpec, model: Any, fn: Callable[[Any], Any]) -> None:
        self.spec, self.model, self._fn = spec, model, fn

    def __call__(self, x: Any) -> Any:
        return self._fn(x)

    def __repr__(self) -> str:
        return f"Runnable({self.spec})"


def perf_timer(runnable: Runnable, x: Any) -> float:
    """The default timer: wall-clock seconds of one call."""
    t0 = time.perf_counter()
    runnable(x)
    return time.perf_counter() - t0


def _torch_micro(spec: MicroSpec) -> nn.Module:
    if spec.kind == "conv":
        layers: list[nn.Module] = [nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.padding,
                                             spec.dilation, spec.groups, bias=spec.bias)]
        if spec.bn:
            layers.append(nn.BatchNorm2d(spec.c_out))
        layers.append(nn.ReLU())
        return nn.Sequential(*layers).eval()
    if spec.kind == "linear":
        return nn.Linear(spec.c_in, spec.c_out, bias=spec.bias).eval()
    if spec.kind == "null":
        return nn.Identity()
    raise ValueError(f"no micro-model for kind {spec.kind}")


def _onnx_micro(spec: MicroSpec, module: nn.Module) -> bytes | None:
    """``module`` as the ONNX graph the TorchScript exporter writes for it in eval mode (BN folded
    into the conv: ``Conv`` + ``Relu``; ``Gemm`` for a linear layer), built directly. None when the
    conv is not expressible that simply (string padding): the caller exports it instead."""
    from onnx import TensorProto, helper, numpy_helper

    from .export import INPUT_NAME, OUTPUT_NAME

    def value(name: str, shape: Sequence[Any]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    nodes, inits = [], []
    if spec.kind == "conv":
        conv = module[0]
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return None
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(spec.c_out, dtype=torch.float64)
        if spec.bn:
            bn = module[1]
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
        inits = [numpy_helper.from_array(w.float().numpy(), "weight"), numpy_helper.from_array(b.float().numpy(), "bias")]
        pads = list(conv.padding) * 2
        nodes = [helper.make_node("Conv", [INPUT_NAME, "weight", "bias"], ["conv_out"], kernel_shape=list(conv.kernel_size),
                                  strides=list(conv.stride), pads=pads, dilations=list(conv.dilation), group=conv.groups),
                 helper.make_node("Relu", ["conv_out"], [OUTPUT_NAME])]
        out_shape = ["batch", spec.c_out, None, None]
    elif spec.kind == "linear":
        inits = [numpy_helper.from_array(module.weight.detach().numpy(), "weight")]
        ins = [INPUT_NAME, "weight"]
        if module.bias is not None:
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "bias"))
            ins.append("bias")
        nodes = [helper.make_node("Gemm", ins, [OUTPUT_NAME], transB=1)]
        out_shape = ["batch", spec.c_out]
    elif spec.kind == "null":
        nodes = [helper.make_node("Relu", [INPUT_NAME], [OUTPUT_NAME])]
        out_shape = ["batch", spec.c_in]
    else:
        raise ValueError(spec.kind)
    in_shape = ["batch", *spec.input_shape[1:]]
    out_shape = [d if d is not None else f"d{i}" for i, d in enumerate(out_shape)]
    graph = helper.make_graph(nodes, "micro", [value(INPUT_NAME, in_shape)], [value(OUTPUT_NAME, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="tas.latency")
    model.ir_version = _IR_VERSION
    return model.SerializeToString()


class _Runtime:
    """Builds :class:`Runnable`\\ s and inputs for one runtime; ``close()`` frees what it made."""

    def __init__(self, runtime: str, threads: int, exporter: str = "auto") -> None:
        self.runtime, self.threads, self.exporter = runtime, threads, exporter
        self.device = torch.device("cuda" if runtime == "torch-cuda" else "cpu")
        self._tmp = tempfile.TemporaryDirectory(prefix="tas-latency-") if runtime == "ort-cpu" else None
        self._inputs: dict[tuple[int, ...], Any] = {}
        self._count = 0
        self._saved_threads: int | None = None
        if runtime == "torch-cpu":
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._inputs.clear()

    def input(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._inputs:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(*shape, generator=gen)
            self._inputs[shape] = x.numpy() if self.runtime == "ort-cpu" else x.to(self.device)
        return self._inputs[shape]

    def _path(self, stem: str) -> Path:
        self._count += 1
        return Path(self._tmp.name) / f"{self._count}_{stem}.onnx"

    def make(self, spec: MicroSpec, whole: nn.Module | None = None) -> Runnable:
        if self.runtime == "ort-cpu":
            return self._make_ort(spec, whole)
        torch.manual_seed(0)
        module = copy.deepcopy(whole).eval() if spec.kind == "model" else _torch_micro(spec)
        module = module.to(self.device)
        if self.runtime == "torch-cuda":
            def run(x, m=module):
                out = m(x)
                torch.cuda.synchronize()
                return out
        else:
            def run(x, m=module):
                return m(x)
        return Runnable(spec, module, run)

    def file(self, spec: MicroSpec, whole: nn.Module | None = None) -> Path:
        """The ONNX file of ``spec`` (ort-cpu): built directly, or exported (the whole model)."""
        from .export import _export_to

        torch.manual_seed(0)
        module = copy.deepcopy(whole).eval() if spec.kind == "model" else _torch_micro(spec)
        path = self._path(spec.kind)
        data = None if spec.kind == "model" else _onnx_micro(spec, module)
        if data is not None:
            path.write_bytes(data)
        else:
            example = torch.randn(2, *spec.input_shape[1:], generator=torch.Generator().manual_seed(0))
            exporter = self.exporter if spec.kind == "model" else "torchscript"
            with torch.no_grad():
                _export_to(module, example, path, _OPSET, exporter)
        return path

    def _make_ort(self, spec: MicroSpec, whole: nn.Module | None) -> Runnable:
        from .export import INPUT_NAME, _session

        session = _session(self.file(spec, whole), self.threads)
        return Runnable(spec, session, lambda x, s=session: s.run(None, {INPUT_NAME: x}))


def measure(runnables: Sequence[Runnable], inputs: Sequence[Any], repeats: int, warmup: int,
            timer: Timer | None = None, pre: int = 0, progress: Any = None) -> list[float]:
    """Median seconds of each runnable, measured interleaved.

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
    return [float(statistics.median(t)) for t in times]


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
out = []
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
    del sessions
with open(job["result"], "w") as f:
    json.dump({"medians": out, "shared_pool": shared}, f)
"""


def _measure_ort_subprocess(paths: list[list[Path]], shapes: list[list[tuple[int, ...]]], threads: int,
                            repeats: int, warmup: int, workdir: Path, bar: Any, pre: int = 0) -> tuple[list[list[float]], bool]:
    """Median seconds per ONNX file, chunk by chunk, measured by :data:`_ORT_WORKER` in a fresh process."""
    import subprocess

    from .export import INPUT_NAME

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
    return result["medians"], bool(result["shared_pool"])


def measure_onnx(paths: Sequence[str | os.PathLike], input_size: Sequence[int], batch: int = 1, threads: int = 2,
                 repeats: int = 30, warmup: int = 5, warm_calls: int = 0) -> list[float]:
    """Median latency (ms) of whole ONNX models measured the way the tables are (fresh process, one
    global thread pool, interleaved, ``warm_calls`` untimed calls before each timed one), so a
    prediction and a measurement can be compared like for like (:func:`tas.export.ort_latency` is
    this). With ``warm_calls=1`` cifar_resnet20 at 32 px measured 1.25-2x lower than with 0.)"""
    _check_args("ort-cpu", batch, threads, repeats, warmup)
    shape = (int(batch), *[int(s) for s in input_size])
    with tempfile.TemporaryDirectory(prefix="tas-latency-") as tmp:
        med, _ = _measure_ort_subprocess([[Path(p) for p in paths]], [[shape] * len(paths)], threads, repeats, warmup,
                                         Path(tmp), None, pre=warm_calls)
    return [m * 1e3 for m in med[0]]


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass
class LayerEntry:
    """One layer's latencies over its width grid.

    ``axes``: the groups indexing ``times``' dimensions (0, 1 or 2; a depthwise conv's one group
    once); ``widths[d]``: the grid of axis ``d``; ``times``: milliseconds, one per grid point (the
    per-call cost already subtracted); ``geometry``: the layer's full-width shape.
    """

    name: str
    kind: str
    in_group: str | None
    out_group: str | None
    block: tuple[str, int] | None
    axes: tuple[str, ...]
    widths: list[list[int]]
    times: np.ndarray
    geometry: dict[str, Any] = field(default_factory=dict)

    def spec(self, point: Mapping[str, int], batch: int) -> MicroSpec:
        """The micro-model at ``point`` (width per axis group)."""
        g = self.geometry
        if self.kind == "linear":
            c_in = point[self.in_group] if self.in_group in point else g["c_in"]
            return MicroSpec("linear", self.name, c_in, g["c_out"], bias=g["bias"], batch=batch)
        if g["depthwise"]:
            c = point[self.axes[0]] if self.axes else g["c_out"]
            c_in = c_out = groups = c
        else:
            c_in = point[self.in_group] if self.in_group in point else g["c_in"]
            c_out = point[self.out_group] if self.out_group in point else g["c_out"]
            groups = g["groups"]
        pad = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
        return MicroSpec("conv", self.name, c_in, c_out, tuple(g["kernel"]), tuple(g["stride"]), pad,
                         tuple(g["dilation"]), groups, g["bias"], g["bn"], tuple(g["in_hw"]), batch)

    def points(self) -> list[tuple[tuple[int, ...], dict[str, int]]]:
        """Every grid point: ``(index tuple, {axis group: width})``."""
        out = []
        for idx in itertools.product(*[range(len(w)) for w in self.widths]):
            out.append((idx, {a: self.widths[d][i] for d, (a, i) in enumerate(zip(self.axes, idx))}))
        return out

    @property
    def full_ms(self) -> float:
        return float(self.times[tuple(len(w) - 1 for w in self.widths)])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in_group": self.in_group, "out_group": self.out_group,
                "block": list(self.block) if self.block else None, "axes": list(self.axes),
                "widths": [list(map(int, w)) for w in self.widths], "times": np.asarray(self.times).tolist(),
                "geometry": self.geometry}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerEntry":
        return cls(d["name"], d["kind"], d["in_group"], d["out_group"], tuple(d["block"]) if d["block"] else None,
                   tuple(d["axes"]), [list(map(int, w)) for w in d["widths"]],
                   np.asarray(d["times"], dtype=np.float64), dict(d["geometry"]))


def _interp(grid: Sequence[int], w: float, group: str) -> np.ndarray:
    """Weights over ``grid`` that give the value at width ``w`` (one-hot on the grid, else linear)."""
    v = np.zeros(len(grid))
    if w in grid:
        v[list(grid).index(w)] = 1.0
        return v
    if not grid[0] < w < grid[-1]:
        raise TasError(f"width {w} of group {group} is outside the latency table's grid "
                       f"{grid[0]}..{grid[-1]}; rebuild the table for this search space")
    j = bisect.bisect_left(grid, w)
    t = (w - grid[j - 1]) / (grid[j] - grid[j - 1])
    v[j - 1], v[j] = 1.0 - t, t
    return v


class LatencyTable:
    """Per-layer latency grids of one model on one runtime, plus the fixed overhead (all ms).

    Attributes:
        key: what the table was measured for (see :func:`cache_key`).
        layers: one :class:`LayerEntry` per conv / linear layer.
        groups: ``{group: {"channels", "widths"}}`` (the grid of each group).
        stages: ``{stage: {"num_blocks", "depths"}}``.
        whole_ms: the whole original model, measured; call_ms: an empty model's call.
        overhead_ms: ``max(0, whole_ms - Σ full-width entries)``; ``overhead_raw_ms`` unclamped.
        meta: repeats, warmup, build seconds, notes.
        path, source: where it is cached and whether it came from there (``cache``) or was ``built``.
    """

    def __init__(self, key: Mapping[str, Any], layers: list[LayerEntry], groups: Mapping[str, Any],
                 stages: Mapping[str, Any], whole_ms: float, call_ms: float, meta: Mapping[str, Any] | None = None
                 ) -> None:
        self.key = dict(key)
        self.layers = layers
        self.groups = {n: {"channels": int(g["channels"]), "widths": [int(w) for w in g["widths"]]}
                       for n, g in groups.items()}
        self.stages = {n: {"num_blocks": int(s["num_blocks"]), "depths": [int(d) for d in s["depths"]]}
                       for n, s in stages.items()}
        self.whole_ms, self.call_ms = float(whole_ms), float(call_ms)
        self.sum_full_ms = float(sum(e.full_ms for e in layers))
        self.overhead_raw_ms = self.whole_ms - self.sum_full_ms
        self.overhead_ms = max(0.0, self.overhead_raw_ms)
        self.clamped = self.overhead_raw_ms < 0
        self.meta = dict(meta or {})
        self.path: Path | None = None
        self.source = "built"
        self._tensors = [torch.as_tensor(e.times, dtype=torch.float64) for e in layers]
        self._matrices: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._checked: set[int] = set()

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "key": self.key, "unit": "ms", "groups": self.groups, "stages": self.stages,
                "whole_ms": self.whole_ms, "call_ms": self.call_ms, "sum_full_ms": self.sum_full_ms,
                "overhead_raw_ms": self.overhead_raw_ms, "overhead_ms": self.overhead_ms, "clamped": self.clamped,
                "meta": self.meta, "layers": [e.to_dict() for e in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        if d.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"latency table format {d.get('format')!r}, expected {FORMAT_VERSION}")
        try:
            return cls(d["key"], [LayerEntry.from_dict(e) for e in d["layers"]], d["groups"], d["stages"],
                       d["whole_ms"], d["call_ms"], d.get("meta"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"malformed latency table: {type(e).__name__}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        from .checkpoint import atomic_write_json

        path = Path(path)
        atomic_write_json(path, self.to_dict())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        from .checkpoint import read_json

        table = cls.from_dict(read_json(path, "latency table"))
        table.path, table.source = Path(path), "cache"
        return table

    # -- exact ------------------------------------------------------------------------------
    def _vector(self, group: str, width: float) -> np.ndarray:
        return _interp(self.groups[group]["widths"], width, group)

    def exact(self, widths: Mapping[str, int], depths: Mapping[str, int]) -> float:
        """Predicted latency (ms) of the architecture with these group widths and stage depths.

        A width between grid points is linearly interpolated; outside the grid is a TasError.
        """
        total = self.overhead_ms
        for e in self.layers:
            if e.block is not None:
                if e.block[0] not in depths:
                    raise TasError(f"no depth given for stage {e.block[0]}")
                if e.block[1] >= depths[e.block[0]]:
                    continue
            v = e.times
            for a in reversed(e.axes):
                if a not in widths:
                    raise TasError(f"no width given for group {a}")
                v = v @ self._vector(a, widths[a])
            total += float(v)
        return float(total)

    def exact_arch(self, arch: Any) -> float:
        """:meth:`exact` of a :class:`tas.arch.Arch`."""
        return self.exact({n: g["width"] for n, g in arch.groups.items()},
                          {n: s["depth"] for n, s in arch.stages.items()})

    @property
    def steady_scale(self) -> float | None:
        """The whole model's steady-state latency over its predicted full latency, or None when the
        table has no steady-state measurement (torch runtimes, fake timers, older tables).

        Layers are timed cold (right after other models), which suits a network bigger than the
        cache; served back to back, a small network keeps its weights cached and runs faster. This
        one factor, measured on the original, maps every prediction to the steady state; ratios
        to the original (what a ``--latency-ratio`` target constrains) do not change.
        """
        steady = self.meta.get("steady_ms")
        return float(steady) / self.full() if steady and self.full() > 0 else None

    def full(self) -> float:
        """Predicted latency of the full model (= ``whole_ms`` unless the overhead was clamped)."""
        return self.exact({n: g["channels"] for n, g in self.groups.items()},
                          {n: s["num_blocks"] for n, s in self.stages.items()})

    def _candidates(self, supernet: Any | None) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        if supernet is None:
            return ({n: g["widths"] for n, g in self.groups.items()},
                    {n: s["depths"] for n, s in self.stages.items()})
        self.check_supernet(supernet)
        return ({n: list(g.widths) for n, g in supernet.groups().items()},
                {n: list(supernet.stage_depths[n]) for n in supernet.graph.stages})

    def smallest(self, supernet: Any | None = None) -> float:
        """Predicted latency of the smallest architecture (every group's narrowest candidate, every
        stage's fewest blocks) of ``supernet``'s space, or of the table's grid without one."""
        widths, depths = self._candidates(supernet)
        return self.exact({n: w[0] for n, w in widths.items()}, {n: d[0] for n, d in depths.items()})

    def fastest(self, supernet: Any | None = None, sweeps: int = 10) -> tuple[float, dict[str, int], dict[str, int]]:
        """``(ms, widths, depths)`` of the fastest architecture found: fewest blocks, and widths by
        coordinate descent from the smallest architecture (latency need not fall with width, so the
        smallest architecture is not always the fastest). Never slower than :meth:`smallest`."""
        cands, dcands = self._candidates(supernet)
        depths = {n: d[0] for n, d in dcands.items()}  # entries are >= 0: dropping blocks never slows
        widths = {n: w[0] for n, w in cands.items()}
        best = self.exact(widths, depths)
        for _ in range(sweeps):
            improved = False
            for n, ws in cands.items():
                for w in ws:
                    if w == widths[n]:
                        continue
                    trial = self.exact({**widths, n: w}, depths)
                    if trial < best - 1e-12:
                        best, widths, improved = trial, {**widths, n: w}, True
            if not improved:
                break
        return best, widths, depths

    # -- expected ---------------------------------------------------------------------------
    def check_supernet(self, supernet: Any) -> None:
        """TasError unless ``supernet`` is the model (graph, input size) this table was measured for."""
        if id(supernet) in self._checked:
            return
        graph = supernet.graph
        if _graph_fingerprint(graph) != self.key.get("graph"):
            raise TasError(f"this latency table was measured for another network ({self.key.get('model')}); "
                           f"the supernet is a {supernet.model_name}: rebuild the table")
        if list(supernet.input_size) != list(self.key.get("input_size", [])):
            raise TasError(f"this latency table was measured at input size {self.key.get('input_size')}, the "
                           f"supernet costs architectures at {list(supernet.input_size)}: rebuild the table")
        for n, g in supernet.groups().items():
            grid = self.groups[n]["widths"]
            for w in g.widths:
                _interp(grid, w, n)  # raises outside the grid
        self._checked.add(id(supernet))

    def _matrix(self, group: str, cands: Sequence[int]) -> torch.Tensor:
        key = (group, tuple(cands))
        if key not in self._matrices:
            self._matrices[key] = torch.as_tensor(np.stack([self._vector(group, w) for w in cands]), dtype=torch.float64)
        return self._matrices[key]

    def expected(self, supernet: Any) -> torch.Tensor:
        """Differentiable expected latency (ms, float32 scalar on the CPU) under softmax(α) and softmax(β).

        Per layer ``Σ_ij p_in(i) p_out(j) T[i, j]`` (one distribution for a depthwise conv), times
        its block's probability of being kept (as :mod:`tas.cost`), plus the fixed overhead.
        """
        self.check_supernet(supernet)
        q: dict[str, torch.Tensor] = {}
        for n, g in supernet.groups().items():
            q[n] = g.probs().cpu().double() @ self._matrix(n, g.widths)
        keep: dict[tuple[str, int], torch.Tensor] = {}
        total = torch.zeros((), dtype=torch.float64)
        for e, t in zip(self.layers, self._tensors):
            v = t
            for a in reversed(e.axes):
                v = v @ q[a]
            if e.block is not None and e.block[1] > 0:
                if e.block not in keep:
                    stage, b = e.block
                    probs = supernet.depth_probs(stage).cpu().double()
                    keep[e.block] = probs[torch.tensor(supernet.stage_depths[stage]) > b].sum()
                v = v * keep[e.block]
            total = total + v
        return (total + self.overhead_ms).float()

    def current(self, supernet: Any) -> float:
        """Predicted latency (ms) of ``supernet``'s current argmax architecture."""
        widths = {n: g.widths[int(g.probs().argmax())] for n, g in supernet.groups().items()}
        depths = {n: supernet.stage_depths[n][int(supernet.depth_probs(n).argmax())] for n in supernet.graph.stages}
        return self.exact(widths, depths)

    def check_target(self, supernet: Any, ratio: float) -> None:
        """Refuse a latency budget (a fraction of :meth:`full`) that no architecture of ``supernet``'s
        space is predicted to meet, naming the reachable minimum."""
        if not 0 < ratio <= 1:
            raise TasError(f"--latency-ratio must be in (0, 1], got {ratio}")
        full = self.full()
        fastest, _, _ = self.fastest(supernet)
        if ratio * full < fastest:
            raise TasError(f"latency target {ratio:.3f} is unreachable: the fastest architecture in this search "
                           f"space is predicted at {fastest:.4g} ms, {fastest / full:.3f} of the full model's "
                           f"{full:.4g} ms ({self.describe()})")

    # -- per group --------------------------------------------------------------------------
    def group_latency(self, group: str, width: int) -> float:
        """Latency (ms) of the layers touching ``group`` at ``width``, every other group at full width
        and every block kept."""
        total = 0.0
        for e in self.layers:
            if group not in e.axes:
                continue
            v = e.times
            for a in reversed(e.axes):
                v = v @ (self._vector(a, width) if a == group else self._vector(a, self.groups[a]["channels"]))
            total += float(v)
        return total

    # -- reporting --------------------------------------------------------------------------
    def describe(self) -> str:
        k = self.key
        return f"{k.get('runtime')}, batch {k.get('batch')}, {k.get('threads')} threads"

    def summary(self) -> str:
        """A text table: one row per layer, then the totals."""
        from .cli import format_table

        rows = []
        for e in self.layers:
            groups = f"{e.in_group or '-'} -> {e.out_group or '-'}"
            grid = "x".join(str(len(w)) for w in e.widths) or "1"
            rows.append([e.name, groups, grid, f"{float(e.times.min()):.4f}", f"{e.full_ms:.4f}"])
        rows.append(["Σ layers at full width", "", "", "", f"{self.sum_full_ms:.4f}"])
        rows.append(["whole model (measured)", "", "", "", f"{self.whole_ms:.4f}"])
        over = f"{self.overhead_ms:.4f}" + (f" (clamped from {self.overhead_raw_ms:.4f})" if self.clamped else "")
        rows.append(["fixed overhead", "", "", "", over])
        rows.append(["predicted: full / smallest", "", "", "", f"{self.full():.4f} / {self.smallest():.4f}"])
        if self.steady_scale is not None:
            rows.append(["whole model, steady state (warm)", "", "", "",
                         f"{self.meta['steady_ms']:.4f} (predictions x {self.steady_scale:.3f})"])
        return format_table(rows, ["layer", "groups (in -> out)", "grid", "min ms", "full-width ms"])


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
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
        import onnxruntime

        parts.append(f"onnxruntime={onnxruntime.__version__}")
    if runtime == "torch-cuda" and torch.cuda.is_available():
        parts += [f"gpu={torch.cuda.get_device_name()}", f"cuda={torch.version.cuda}"]
    return "; ".join(parts)


def _graph_fingerprint(graph: Any) -> str:
    desc = {"family": graph.family,
            "groups": [[n, g.channels, g.conv_groups] for n, g in graph.groups.items()],
            "layers": [[l.name, l.kind, l.in_group, l.out_group, list(l.block) if l.block else None] for l in graph.layers],
            "stages": [[n, s.num_blocks] for n, s in graph.stages.items()]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2,
              hardware: str | None = None, warm_calls: int = 0) -> dict[str, Any]:
    """What a cached table must match: model (name, kwargs, graph fingerprint), input size, runtime,
    batch, threads, the hardware string (and the measurement's ``warm_calls``)."""
    return {"format": FORMAT_VERSION, "model": supernet.model_name,
            "model_kwargs": json.loads(json.dumps(dict(supernet.model_kwargs), default=str)),
            "graph": _graph_fingerprint(supernet.graph), "input_size": [int(s) for s in supernet.input_size],
            "runtime": runtime, "batch": int(batch), "threads": int(threads),
            "hardware": hardware if hardware is not None else hardware_string(runtime), "warm_calls": int(warm_calls)}


def cache_path(key: Mapping[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    """The JSON file a table with ``key`` is cached in."""
    root = Path(os.path.expanduser(str(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key["model"]))
    return root / f"{safe}_{key['runtime']}_b{key['batch']}_t{key['threads']}_{digest}.json"


def _check_args(runtime: str, batch: int, threads: int, repeats: int, warmup: int) -> None:
    if runtime not in RUNTIMES:
        raise TasError(f"unknown latency runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if runtime == "torch-cuda" and not torch.cuda.is_available():
        raise TasError("runtime torch-cuda needs a CUDA GPU, and torch.cuda.is_available() is False here "
                       "(use ort-cpu or torch-cpu)")
    for name, v, low in (("batch", batch, 1), ("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise TasError(f"latency {name} must be an integer >= {low}, got {v!r}")


@torch.no_grad()
def _layer_geometry(supernet: Any) -> dict[str, dict[str, Any]]:
    """Full-width shape of every conv / linear layer, input H×W recorded with forward hooks."""
    model = supernet.template
    graph = supernet.graph
    modules = dict(model.named_modules())
    in_hw: dict[str, tuple[int, ...]] = {}
    wanted = [l for l in graph.layers if l.kind in ("conv", "linear")]
    hooks = [modules[l.name].register_forward_pre_hook(
        lambda m, args, n=l.name: in_hw.__setitem__(n, tuple(args[0].shape[2:]))) for l in wanted]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *supernet.input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for i, l in enumerate(graph.layers):
        if l.kind not in ("conv", "linear"):
            continue
        m = modules[l.name]
        if l.name not in in_hw:
            raise TasError(f"layer {l.name} did not run in a forward pass of {supernet.model_name}; cannot time it")
        nxt = graph.layers[i + 1] if i + 1 < len(graph.layers) else None
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            out[l.name] = {"c_in": m.in_channels, "c_out": m.out_channels, "kernel": list(m.kernel_size),
                           "stride": list(m.stride), "dilation": list(m.dilation), "groups": m.groups,
                           "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                           "bias": m.bias is not None, "depthwise": depthwise,
                           "bn": bool(nxt is not None and nxt.kind == "bn" and nxt.out_group == l.out_group),
                           "in_hw": list(in_hw[l.name])}
        elif isinstance(m, nn.Linear):
            out[l.name] = {"c_in": m.in_features, "c_out": m.out_features, "bias": m.bias is not None}
        else:
            raise TasError(f"layer {l.name} is a {type(m).__name__}; latency tables time Conv2d and Linear layers")
    return out


def _entries(supernet: Any, grid: Mapping[str, list[int]]) -> list[LayerEntry]:
    geometry = _layer_geometry(supernet)
    entries = []
    for l in supernet.graph.layers:
        if l.name not in geometry:
            continue
        g = geometry[l.name]
        if l.kind == "conv" and g["depthwise"]:
            one = l.in_group or l.out_group
            axes: tuple[str, ...] = (one,) if one else ()
        elif l.kind == "linear":
            axes = (l.in_group,) if l.in_group else ()
        else:
            axes = tuple(dict.fromkeys(a for a in (l.in_group, l.out_group) if a))
        widths = [list(grid[a]) for a in axes]
        entries.append(LayerEntry(l.name, "linear" if l.kind == "linear" else "conv", l.in_group, l.out_group,
                                  l.block, axes, widths, np.zeros([len(w) for w in widths]), g))
    return entries


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


def build_latency_table(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2,
                        repeats: int = 30, warmup: int = 5, timer: Timer | None = None,
                        cache_dir: str | os.PathLike | None = None, progress: bool = True,
                        hardware: str | None = None, save: bool = True, exporter: str = "auto",
                        extra_widths: Mapping[str, Iterable[int]] | None = None, warm_calls: int = 0) -> LatencyTable:
    """Measure a :class:`LatencyTable` for ``supernet``'s model and search space (see the module doc).

    Args:
        supernet: a :class:`tas.supernet.Supernet`; its ``template`` (the original network) gives
            the layers' shapes, and is timed whole for the overhead.
        runtime: ``ort-cpu``, ``torch-cpu`` or ``torch-cuda``.
        batch, threads: the deployment setting timed (ORT intra-op threads / torch CPU threads).
        repeats, warmup: timed and discarded round-robin passes over all micro-models.
        timer: ``timer(runnable, input) -> seconds`` replacing the wall clock (tests); see
            :class:`Runnable` for what it receives.
        cache_dir: where the table is written (default ``~/.cache/tas/latency``) unless ``save`` is False.
        hardware: the hardware string in the key (default :func:`hardware_string`).
        exporter: ONNX exporter for the whole model (``auto`` = dynamo like :func:`tas.export.export_onnx`).
        extra_widths: more grid widths per group beyond the supernet's candidates.
        warm_calls: untimed calls of the same model before each timed one. 0 (default): every
            timed call finds caches holding other models, as a layer's weights are inside a network
            bigger than the cache; 1 measures each layer with its weights hot (see the module doc).
    """
    _check_args(runtime, batch, threads, repeats, warmup)
    if not isinstance(warm_calls, int) or warm_calls < 0:
        raise TasError(f"warm_calls must be an integer >= 0, got {warm_calls!r}")
    t_start = time.perf_counter()
    steady_ms = None
    key = cache_key(supernet, runtime, batch, threads, hardware, warm_calls)
    grid = {}
    for n, g in supernet.groups().items():
        ws = set(int(w) for w in g.widths) | set(int(w) for w in (extra_widths or {}).get(n, ())) | {g.channels}
        grid[n] = sorted(ws)
    entries = _entries(supernet, grid)

    # every micro-model: (entry index or -1 whole / -2 null, grid index, spec)
    items: list[tuple[int, tuple[int, ...], MicroSpec]] = []
    for k, e in enumerate(entries):
        for idx, point in e.points():
            items.append((k, idx, e.spec(point, batch)))
    c, h, w = supernet.input_size
    whole_spec = MicroSpec("model", None, c_in=int(c), c_out=0, in_hw=(int(h), int(w)), batch=batch)
    null_spec = MicroSpec("null", None, c_in=1, c_out=1, batch=batch)
    chunks: list[list[tuple[int, tuple[int, ...], MicroSpec]]] = [[(-1, (), whole_spec)]]
    size = sum(p.numel() * 4 for p in supernet.template.parameters())
    for it in items:
        if size + it[2].weight_bytes > _CHUNK_BYTES and len(chunks[-1]) > 1:
            chunks.append([])
            size = 0
        chunks[-1].append(it)
        size += it[2].weight_bytes

    rt = _Runtime(runtime, threads, exporter)
    chunks = [[(-2, (), null_spec)] + chunk for chunk in chunks]
    total = sum(len(c) for c in chunks)
    shared_pool = None
    try:
        if runtime == "ort-cpu" and timer is None:
            paths: list[list[Path]] = []
            with _progress(total, "latency: writing ONNX micro-models", progress) as bar:
                for chunk in chunks:
                    paths.append([])
                    for _, _, spec in chunk:
                        paths[-1].append(rt.file(spec, supernet.template))
                        bar.update(1)
            t_measure = time.perf_counter()
            with _progress(len(chunks) * (warmup + repeats), f"latency: timing {total} models", progress) as bar:
                medians, shared_pool = _measure_ort_subprocess(
                    paths, [[spec.input_shape for _, _, spec in c] for c in chunks], threads, repeats, warmup,
                    Path(rt._tmp.name), bar, pre=warm_calls)
            # The whole model again, alone and each timed call right after an untimed one: the
            # steady state a served network runs in. A network whose weights fit in the cache runs
            # there up to 2x faster than its cold-timed layers add up to (see steady_scale).
            steady, _ = _measure_ort_subprocess([[paths[0][1]]], [[whole_spec.input_shape]], threads, repeats,
                                                warmup, Path(rt._tmp.name), None, pre=max(1, warm_calls))
            steady_ms = steady[0][0] * 1e3
        else:
            medians, t_measure = [], time.perf_counter()
            for ci, chunk in enumerate(chunks):
                tag = f" {ci + 1}/{len(chunks)}" if len(chunks) > 1 else ""
                runnables, inputs = [], []
                with _progress(len(chunk), f"latency: building {runtime} models{tag}", progress) as bar:
                    for _, _, spec in chunk:
                        runnables.append(rt.make(spec, supernet.template))
                        inputs.append(rt.input(spec.input_shape))
                        bar.update(1)
                with _progress(warmup + repeats, f"latency: timing {len(chunk)} models{tag}", progress) as bar:
                    with torch.inference_mode():
                        medians.append(measure(runnables, inputs, repeats, warmup, timer, pre=warm_calls, progress=bar))
                del runnables, inputs
        measure_s = time.perf_counter() - t_measure
    finally:
        rt.close()
    whole_ms, calls = 0.0, []
    for chunk, med in zip(chunks, medians):
        med_ms = [m * 1e3 for m in med]
        null = med_ms[0]
        calls.append(null)
        for (k, idx, _), m in zip(chunk[1:], med_ms[1:]):
            if k == -1:
                whole_ms = m
            else:
                entries[k].times[idx] = max(0.0, m - null)
    call_ms = float(statistics.median(calls))
    build_s = time.perf_counter() - t_start
    groups = {n: {"channels": g.channels, "widths": grid[n]} for n, g in supernet.graph.groups.items()}
    stages = {n: {"num_blocks": s.num_blocks, "depths": list(supernet.stage_depths[n])}
              for n, s in supernet.graph.stages.items()}
    meta = {"repeats": repeats, "warmup": warmup, "warm_calls": warm_calls, "micro_models": len(items), "chunks": len(chunks),
            "build_s": round(build_s, 3),
            "measure_s": round(measure_s, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "timer": "perf_counter" if timer is None else getattr(timer, "__name__", type(timer).__name__),
            "notes": []}
    if shared_pool is not None:
        meta["ort_thread_pool"] = "global" if shared_pool else "per-session"
    if steady_ms is not None:
        meta["steady_ms"] = steady_ms
    table = LatencyTable(key, entries, groups, stages, whole_ms, call_ms, meta)
    if table.clamped:
        table.meta["notes"].append(
            f"the layers at full width sum to {table.sum_full_ms:.4g} ms, more than the whole model's "
            f"{table.whole_ms:.4g} ms; the fixed overhead is clamped to 0, so predictions run up to "
            f"{-table.overhead_raw_ms:.4g} ms high")
    if save:
        table.save(cache_path(key, cache_dir))
    return table


def load_or_build(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2, repeats: int = 30,
                  warmup: int = 5, timer: Timer | None = None, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, hardware: str | None = None, rebuild: bool = False,
                  exporter: str = "auto", warm_calls: int = 0) -> LatencyTable:
    """The cached table for this supernet and setting, else a new one (measured and cached).

    A cached table whose grid misses some of the supernet's candidate widths is rebuilt over the
    union of both grids (so alternating search spaces do not thrash the cache). ``table.source``
    says ``cache`` or ``built``; ``table.path`` where it lives.
    """
    _check_args(runtime, batch, threads, repeats, warmup)
    key = cache_key(supernet, runtime, batch, threads, hardware, warm_calls)
    path = cache_path(key, cache_dir)
    extra: dict[str, list[int]] = {}
    if path.is_file() and not rebuild:
        try:
            table = LatencyTable.load(path)
        except CheckpointError as e:
            print(f"note: ignoring the cached latency table ({e}); measuring a new one", file=sys.stderr)
        else:
            if table.key == key:
                missing = {n: [w for w in g.widths if w not in table.groups.get(n, {}).get("widths", [])]
                           for n, g in supernet.groups().items()}
                if not any(missing.values()):
                    return table
                extra = {n: table.groups[n]["widths"] for n in table.groups}
    return build_latency_table(supernet, runtime, batch, threads, repeats, warmup, timer, cache_dir, progress,
                               hardware, save=True, exporter=exporter, extra_widths=extra, warm_calls=warm_calls)


def aligned_candidates(table: LatencyTable, candidates: Mapping[str, Sequence[int]] | None = None,
                       tolerance: float = 0.0) -> dict[str, list[int]]:
    """Per group, the candidate widths that survive latency alignment (``divisor: auto``).

    A width is dropped when a wider candidate of the same group is no slower (its latency, summed
    over the layers the group touches with every other group at full width, is at most
    ``(1 + tolerance)`` times this one's): it would cost as much for fewer channels. What remains
    gets strictly faster as it gets narrower; the full width is always kept.

    Args:
        candidates: the widths to filter per group (default: the table's grid).
        tolerance: a wider width within this fraction of a narrower one's latency also drops it.
    """
    out: dict[str, list[int]] = {}
    for n, g in table.groups.items():
        ws = sorted(int(w) for w in (candidates[n] if candidates is not None and n in candidates else g["widths"]))
        lat = [table.group_latency(n, w) for w in ws]
        keep, best = [], math.inf  # best: the fastest latency among wider candidates
        for w, t in zip(reversed(ws), reversed(lat)):
            if not best <= t * (1 + tolerance):
                keep.append(w)
            best = min(best, t)
        out[n] = sorted(keep)
    return out


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tas.latency", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="measure (or load the cached) latency table of a model's search space")
    b.add_argument("--model", required=True, help="timm model name (cifar_resnet20, resnet18, ...)")
    b.add_argument("--input-size", type=int, nargs=3, required=True, metavar=("C", "H", "W"))
    b.add_argument("--num-classes", type=int, default=10, help="classifier outputs; match your teacher's (default 10)")
    b.add_argument("--space", default=None, help="search space preset or YAML (default: the model's preset)")
    b.add_argument("--runtime", default="ort-cpu", choices=RUNTIMES)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--threads", type=int, default=2, help="ORT intra-op / torch CPU threads (default 2)")
    b.add_argument("--repeats", type=int, default=30)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--warm-calls", type=int, default=0,
                   help="untimed calls before each timed one (0: cold caches, as in a network bigger than them)")
    b.add_argument("--cache-dir", default=None, help=f"default {DEFAULT_CACHE_DIR}")
    b.add_argument("--rebuild", action="store_true", help="measure again even when a cached table exists")
    b.add_argument("--json", default=None, help="also write the table to this JSON file")
    b.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``build``: load or measure the table, print its summary, the width alignment and the cache path."""
    from .cli import parse_args
    from .models.factory import create_model
    from .supernet import create_supernet

    args = parse_args(build_parser(), argv)
    size = list(args.input_size)
    if min(size) < 1:
        raise TasError(f"--input-size must be positive, got {size}")
    model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0]).eval()
    supernet = create_supernet(model, args.space, input_size=size, model_name=args.model,
                               model_kwargs={"num_classes": args.num_classes, "in_chans": size[0]})
    t0 = time.perf_counter()
    table = load_or_build(supernet, args.runtime, args.batch, args.threads, args.repeats, args.warmup,
                          cache_dir=args.cache_dir, progress=not args.no_progress, rebuild=args.rebuild,
                          warm_calls=args.warm_calls)
    took = time.perf_counter() - t0
    print(table.summary())
    for note in table.meta.get("notes", []):
        print(f"note: {note}")
    aligned = aligned_candidates(table, {n: g.widths for n, g in supernet.groups().items()})
    dropped = {n: sorted(set(g.widths) - set(aligned[n])) for n, g in supernet.groups().items()}
    dropped = {n: d for n, d in dropped.items() if d}
    print("width alignment drops: " + ("; ".join(f"{n}: {d}" for n, d in dropped.items()) if dropped else "nothing"))
    fastest, _, _ = table.fastest(supernet)
    print(f"predicted: full {table.full():.4f} ms, fastest in the space {fastest:.4f} ms "
          f"(ratio {fastest / table.full():.3f}); {table.describe()}")
    how = "loaded from cache" if table.source == "cache" else f"measured {table.meta['micro_models']} micro-models in {took:.1f} s"
    print(f"latency table: {table.path} ({how})")
    if args.json:
        from .checkpoint import atomic_write_json

        atomic_write_json(args.json, table.to_dict())
    return 0


if __name__ == "__main__":
    from .cli import run_main

    sys.exit(run_main(main))
