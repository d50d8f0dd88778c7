"""Building a latency table: every prunable layer's geometry, its micro-models over the width grid,
measured in chunks (:func:`build_latency_table`), and the JSON cache keyed by model, setting and
hardware (:func:`cache_key`, :func:`load_or_build`; see :mod:`tas.deploy.latency`).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from timm.layers import Conv2dSame
from tqdm.auto import tqdm

from ...errors import CheckpointError, TasError
from .measure import Timer, _check_args, _measure_ort_subprocess, hardware_string, measure
from .micro import MicroSpec, _Runtime
from .table import FORMAT_VERSION, LatencyTable, LayerEntry, _graph_fingerprint

DEFAULT_CACHE_DIR = "~/.cache/tas/latency"
#: parameters (bytes) of the micro-models alive at once; more are measured in several chunks
_CHUNK_BYTES = 256 * 2**20


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
                           "padding": _padding(m, in_hw[l.name]),
                           "bias": m.bias is not None, "depthwise": depthwise,
                           "bn": bool(nxt is not None and nxt.kind == "bn" and nxt.out_group == l.out_group),
                           "in_hw": list(in_hw[l.name])}
        elif isinstance(m, nn.Linear):
            out[l.name] = {"c_in": m.in_features, "c_out": m.out_features, "bias": m.bias is not None}
        else:
            raise TasError(f"layer {l.name} is a {type(m).__name__}; latency tables time Conv2d and Linear layers")
    return out


def _padding(conv: nn.Conv2d, in_hw: tuple[int, ...]) -> str | list[int]:
    """The padding ``conv`` applies to an ``in_hw`` input: its static ``padding`` (``[h, w]`` or a
    string), or for timm's dynamic TF "same" conv (``padding`` (0, 0), padded in forward) the pads
    it computes for that size, ``[top, left, bottom, right]`` (asymmetric when the total is odd)."""
    if not isinstance(conv, Conv2dSame):
        return conv.padding if isinstance(conv.padding, str) else list(conv.padding)
    pads = []
    for x, k, s, d in zip(in_hw, conv.kernel_size, conv.stride, conv.dilation):
        pads.append(max((-(-x // s) - 1) * s + (k - 1) * d + 1 - x, 0))
    return [pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2]


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
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


def build_latency_table(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2,
                        repeats: int = 30, warmup: int = 5, timer: Timer | None = None,
                        cache_dir: str | os.PathLike | None = None, progress: bool = True,
                        hardware: str | None = None, save: bool = True, exporter: str = "auto",
                        extra_widths: Mapping[str, Iterable[int]] | None = None, warm_calls: int = 0) -> LatencyTable:
    """Measure a :class:`LatencyTable` for ``supernet``'s model and search space (see the module doc).

    Args:
        supernet: a :class:`tas.nas.supernet.Supernet`; its ``template`` (the original network) gives
            the layers' shapes, and is timed whole for the overhead.
        runtime: ``ort-cpu``, ``torch-cpu`` or ``torch-cuda``.
        batch, threads: the deployment setting timed (ORT intra-op threads / torch CPU threads).
        repeats, warmup: timed and discarded round-robin passes over all micro-models.
        timer: ``timer(runnable, input) -> seconds`` replacing the wall clock (tests); see
            :class:`Runnable` for what it receives.
        cache_dir: where the table is written (default ``~/.cache/tas/latency``) unless ``save`` is False.
        hardware: the hardware string in the key (default :func:`hardware_string`).
        exporter: ONNX exporter for the whole model (``auto`` = dynamo like :func:`tas.deploy.export.export_onnx`).
        extra_widths: more grid widths per group beyond the supernet's candidates.
        warm_calls: untimed calls of the same model before each timed one. 0 (default): every
            timed call finds caches holding other models, as a layer's weights are inside a network
            bigger than the cache; 1 measures each layer with its weights hot (see the module doc).
    """
    _check_args(runtime, batch, threads, repeats, warmup)
    if not isinstance(warm_calls, int) or warm_calls < 0:
        raise TasError(f"warm_calls must be an integer >= 0, got {warm_calls!r}")
    t_start = time.perf_counter()
    steady_ms = shared_pool = None
    key = cache_key(supernet, runtime, batch, threads, hardware, warm_calls)
    grid = {}
    for n, g in supernet.groups().items():
        ws = set(int(w) for w in g.widths) | set(int(w) for w in (extra_widths or {}).get(n, ())) | {g.channels}
        grid[n] = sorted(ws)
    entries = _entries(supernet, grid)
    chunks, whole_spec, num_items = _chunks(supernet, entries, batch)

    rt = _Runtime(runtime, threads, exporter)
    try:
        if runtime == "ort-cpu" and timer is None:
            medians, shared_pool, steady_ms, t_measure = _time_ort(rt, chunks, supernet.template, whole_spec,
                                                                    repeats, warmup, warm_calls, progress)
        else:
            medians, t_measure = _time_in_process(rt, chunks, supernet.template, repeats, warmup, timer, warm_calls,
                                                  progress)
        measure_s = time.perf_counter() - t_measure
    finally:
        rt.close()
    whole_ms, call_ms = _fill(entries, chunks, medians)
    build_s = time.perf_counter() - t_start
    groups = {n: {"channels": g.channels, "widths": grid[n]} for n, g in supernet.graph.groups.items()}
    stages = {n: {"num_blocks": s.num_blocks, "depths": list(supernet.stage_depths[n])}
              for n, s in supernet.graph.stages.items()}
    meta = {"repeats": repeats, "warmup": warmup, "warm_calls": warm_calls, "micro_models": num_items, "chunks": len(chunks),
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
            f"{table.whole_ms:.4g} ms; the fixed overhead is clamped to 0 and every layer scaled by "
            f"{table.layer_scale:.4g}")
    if save:
        table.save(cache_path(key, cache_dir))
    return table


#: one chunk of micro-models timed together: (entry index, or -1 the whole model / -2 the null model;
#: grid index; spec)
_Chunk = list[tuple[int, tuple[int, ...], MicroSpec]]


def _chunks(supernet: Any, entries: Sequence[LayerEntry], batch: int) -> tuple[list[_Chunk], MicroSpec, int]:
    """Every micro-model, in chunks whose weights stay under :data:`_CHUNK_BYTES` (the whole model
    opens the first); each chunk starts with the null model. Returns ``(chunks, the whole model's
    spec, number of layer micro-models)``."""
    items: _Chunk = []
    for k, e in enumerate(entries):
        for idx, point in e.points():
            items.append((k, idx, e.spec(point, batch)))
    c, h, w = supernet.input_size
    whole_spec = MicroSpec("model", None, c_in=int(c), c_out=0, in_hw=(int(h), int(w)), batch=batch)
    null_spec = MicroSpec("null", None, c_in=1, c_out=1, batch=batch)
    chunks: list[_Chunk] = [[(-1, (), whole_spec)]]
    size = sum(p.numel() * 4 for p in supernet.template.parameters())
    for it in items:
        if size + it[2].weight_bytes > _CHUNK_BYTES and len(chunks[-1]) > 1:
            chunks.append([])
            size = 0
        chunks[-1].append(it)
        size += it[2].weight_bytes
    return [[(-2, (), null_spec)] + chunk for chunk in chunks], whole_spec, len(items)


def _time_ort(rt: "_Runtime", chunks: list[_Chunk], template: nn.Module, whole_spec: MicroSpec, repeats: int,
              warmup: int, warm_calls: int, progress: bool) -> tuple[list[list[float]], bool, float, float]:
    """ONNX Runtime: write every micro-model, time them in one worker process; then the whole model in
    the steady state. Returns ``(medians per chunk (s), shared thread pool?, steady ms, t of the start)``."""
    total = sum(len(c) for c in chunks)
    paths: list[list[Path]] = []
    with _progress(total, "latency: writing ONNX micro-models", progress) as bar:
        for chunk in chunks:
            paths.append([])
            for _, _, spec in chunk:
                paths[-1].append(rt.file(spec, template))
                bar.update(1)
    t_measure = time.perf_counter()
    with _progress(len(chunks) * (warmup + repeats), f"latency: timing {total} models", progress) as bar:
        medians, shared_pool = _measure_ort_subprocess(
            paths, [[spec.input_shape for _, _, spec in c] for c in chunks], rt.threads, repeats, warmup,
            Path(rt._tmp.name), bar, pre=warm_calls)
    # The whole model again, alone and each timed call right after an untimed one: the
    # steady state a served network runs in. A network whose weights fit in the cache runs
    # there up to 2x faster than its cold-timed layers add up to (see steady_scale).
    steady, _ = _measure_ort_subprocess([[paths[0][1]]], [[whole_spec.input_shape]], rt.threads, repeats,
                                        warmup, Path(rt._tmp.name), None, pre=max(1, warm_calls))
    return medians, shared_pool, steady[0][0] * 1e3, t_measure


def _time_in_process(rt: "_Runtime", chunks: list[_Chunk], template: nn.Module, repeats: int, warmup: int,
                     timer: Timer | None, warm_calls: int, progress: bool) -> tuple[list[list[float]], float]:
    """torch (or a test's ``timer``): build and time chunk by chunk in this process. Returns
    ``(medians per chunk (s), t of the start)``."""
    medians, t_measure = [], time.perf_counter()
    for ci, chunk in enumerate(chunks):
        tag = f" {ci + 1}/{len(chunks)}" if len(chunks) > 1 else ""
        runnables, inputs = [], []
        with _progress(len(chunk), f"latency: building {rt.runtime} models{tag}", progress) as bar:
            for _, _, spec in chunk:
                runnables.append(rt.make(spec, template))
                inputs.append(rt.input(spec.input_shape))
                bar.update(1)
        with _progress(warmup + repeats, f"latency: timing {len(chunk)} models{tag}", progress) as bar:
            with torch.inference_mode():
                medians.append(measure(runnables, inputs, repeats, warmup, timer, pre=warm_calls, progress=bar))
        del runnables, inputs
    return medians, t_measure


def _fill(entries: Sequence[LayerEntry], chunks: list[_Chunk], medians: list[list[float]]) -> tuple[float, float]:
    """Write each layer's time (its median minus its chunk's null call) into ``entries``; returns
    ``(whole model ms, median null call ms)``."""
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
    return whole_ms, float(statistics.median(calls))


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
