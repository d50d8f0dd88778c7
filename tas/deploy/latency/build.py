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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from timm.layers import Conv2dSame
from tqdm.auto import tqdm

from ...errors import CheckpointError, TasError
from ...prune.materialize import materialize
from .calibrate import calibration_archs, fit_calibration
from .measure import Timer, check_timing_args, measure_ort_subprocess, cuda_event_timer, hardware_string, measure_stats
from .micro import MicroSpec, MicroRuntime
from .table import FORMAT_VERSION, LatencyTable, LayerEntry, graph_fingerprint

DEFAULT_CACHE_DIR = "~/.cache/tas/latency"
#: parameters (bytes) of the micro-models alive at once; more are measured in several chunks
_CHUNK_BYTES = 256 * 2**20
#: an entry whose repeats spread more than this (IQR / median) is measured again
NOISE_LIMIT = 0.25
#: random networks timed whole to calibrate a table, besides the full and the smallest one
CALIBRATION_ARCHS = 8


def cache_key(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2,
              hardware: str | None = None, warm_calls: int = 0) -> dict[str, Any]:
    """What a cached table must match: model (name, kwargs, graph fingerprint), input size, runtime,
    batch, threads, the hardware string (and the measurement's ``warm_calls``)."""
    return {"format": FORMAT_VERSION, "model": supernet.model_name,
            "model_kwargs": json.loads(json.dumps(dict(supernet.model_kwargs), default=str)),
            "graph": graph_fingerprint(supernet.graph), "input_size": [int(s) for s in supernet.input_size],
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


@dataclass
class _Timing:
    """How one build times its models: the runtime, the repeats, the timer, the progress bars."""

    rt: MicroRuntime
    threads: int
    repeats: int
    warmup: int
    timer: Timer | None
    progress: bool
    shared_pool: bool | None = None  # ORT without a timer: whether the worker shared one pool


#: ``(spec, module)``: a micro-model (module None) or a whole network (kind ``model``)
_Model = tuple[MicroSpec, "nn.Module | None"]


def _time_chunks(t: _Timing, chunks: list[list[_Model]], pre: int, what: str
                 ) -> tuple[list[list[float]], list[list[float]], bool | None]:
    """Median seconds and spread of every model, chunk by chunk, each chunk interleaved; and (ORT
    without a timer) whether the worker shared one thread pool. ``pre``: untimed calls before each
    timed one."""
    total = sum(len(c) for c in chunks)
    if t.rt.runtime == "ort-cpu" and t.timer is None:
        paths: list[list[Path]] = []
        with _progress(total, f"latency: writing ONNX {what}", t.progress) as bar:
            for chunk in chunks:
                paths.append([])
                for spec, module in chunk:
                    paths[-1].append(t.rt.file(spec, module))
                    bar.update(1)
        with _progress(len(chunks) * (t.warmup + t.repeats), f"latency: timing {total} {what}", t.progress) as bar:
            return measure_ort_subprocess(paths, [[spec.input_shape for spec, _ in c] for c in chunks], t.threads,
                                           t.repeats, t.warmup, t.rt.workdir, bar, pre=pre)
    medians, spreads = [], []
    for ci, chunk in enumerate(chunks):
        tag = f" {ci + 1}/{len(chunks)}" if len(chunks) > 1 else ""
        runnables, inputs = [], []
        with _progress(len(chunk), f"latency: building {t.rt.runtime} {what}{tag}", t.progress) as bar:
            for spec, module in chunk:
                runnables.append(t.rt.make(spec, module))
                inputs.append(t.rt.input(spec.input_shape))
                bar.update(1)
        with _progress(t.warmup + t.repeats, f"latency: timing {len(chunk)} {what}{tag}", t.progress) as bar:
            with torch.inference_mode():
                med, spr = measure_stats(runnables, inputs, t.repeats, t.warmup, t.timer, pre=pre, progress=bar)
        medians.append(med)
        spreads.append(spr)
        del runnables, inputs
    return medians, spreads, None


def _chunked(items: list[tuple[int, tuple[int, ...], MicroSpec]], first_bytes: int
             ) -> list[list[tuple[int, tuple[int, ...], MicroSpec]]]:
    """``items`` in chunks of at most :data:`_CHUNK_BYTES` of weights (the first holding ``first_bytes``
    already), each led by the empty model (index -2) whose call every entry is measured net of."""
    null = (-2, (), MicroSpec("null", None, c_in=1, c_out=1, batch=items[0][2].batch if items else 1))
    chunks: list[list[tuple[int, tuple[int, ...], MicroSpec]]] = [[]]
    size = first_bytes
    for it in items:
        if size + it[2].weight_bytes > _CHUNK_BYTES and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(it)
        size += it[2].weight_bytes
    return [[null] + c for c in chunks]


def _measure_entries(t: _Timing, supernet: Any, entries: list[LayerEntry],
                     items: list[tuple[int, tuple[int, ...], MicroSpec]], warm_calls: int,
                     keep_better: bool = False) -> tuple[float | None, list[float]]:
    """Time ``items`` (entry index, grid index, spec; index -1: the whole original) and write each
    entry's time (net of the chunk's empty-model call) and spread; returns the whole model's ms
    (None when not among the items) and the empty model's ms per chunk. ``keep_better``: keep an
    entry's old value where it was less noisy than the new one (re-measuring)."""
    whole_bytes = sum(p.numel() * 4 for p in supernet.template.parameters()) if any(k == -1 for k, _, _ in items) else 0
    chunks = _chunked(items, whole_bytes)
    models = [[(spec, supernet.template if k == -1 else None) for k, _, spec in c] for c in chunks]
    medians, spreads, pool = _time_chunks(t, models, warm_calls, "models")
    if pool is not None:
        t.shared_pool = pool
    whole_ms, calls = None, []
    for chunk, med, spr in zip(chunks, medians, spreads):
        null = med[0] * 1e3
        calls.append(null)
        for (k, idx, _), m, sp in zip(chunk[1:], med[1:], spr[1:]):
            if k == -1:
                whole_ms = m * 1e3
            elif not (keep_better and entries[k].spread[idx] <= sp):
                entries[k].times[idx] = max(0.0, m * 1e3 - null)
                entries[k].spread[idx] = sp
    return whole_ms, calls


def _calibrate(t: _Timing, supernet: Any, table: LatencyTable, n: int, warm_calls: int) -> dict[str, Any] | None:
    """Time the full, the smallest and ``n`` random networks of the space whole, cold and in the
    steady state, and fit the table to them (:mod:`tas.deploy.latency.calibrate`); None when no fit holds."""
    c, h, w = supernet.input_size
    spec = MicroSpec("model", None, c_in=int(c), c_out=0, in_hw=(int(h), int(w)), batch=int(table.key["batch"]))
    archs = calibration_archs(supernet, n)
    nets = [materialize(supernet.template, a).eval() for a in archs]
    out = {}
    for timing, pre in (("cold", warm_calls), ("steady", max(1, warm_calls))):
        med, spr, _ = _time_chunks(t, [[(spec, m) for m in nets]], pre, f"networks ({timing})")
        out[timing] = (med[0], spr[0])
    samples = []
    for i, a in enumerate(archs):
        layers_ms, mb = table.layer_sums(a.widths, a.depths)
        samples.append({"method": a.method, "widths": a.widths, "depths": a.depths, "layers_ms": layers_ms, "mb": mb,
                        **{f"{k}_ms": v[0][i] * 1e3 for k, v in out.items()},
                        **{f"{k}_spread": v[1][i] for k, v in out.items()}})
    return fit_calibration(samples, [e.times for e in table.layers], table._mb)


def build_latency_table(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2,
                        repeats: int = 30, warmup: int = 5, timer: Timer | None = None,
                        cache_dir: str | os.PathLike | None = None, progress: bool = True,
                        hardware: str | None = None, save: bool = True, exporter: str = "auto",
                        extra_widths: Mapping[str, Iterable[int]] | None = None, warm_calls: int = 0,
                        calibrate: int = CALIBRATION_ARCHS, noise_limit: float = NOISE_LIMIT,
                        remeasure: int = 1) -> LatencyTable:
    """Measure a :class:`LatencyTable` for ``supernet``'s model and search space (see the module doc).

    Args:
        supernet: a :class:`tas.nas.supernet.Supernet`; its ``template`` (the original network) gives
            the layers' shapes, and is timed whole for the overhead.
        runtime: ``ort-cpu``, ``torch-cpu`` or ``torch-cuda`` (timed with CUDA events unless ``timer``).
        batch, threads: the deployment setting timed (ORT intra-op threads / torch CPU threads).
        repeats, warmup: timed and discarded round-robin passes over all micro-models.
        timer: ``timer(runnable, input) -> seconds`` replacing the wall clock (tests); see
            :class:`Runnable` for what it receives.
        cache_dir: where the table is written (default ``~/.cache/tas/latency``) unless ``save`` is False.
        hardware: the hardware string in the key (default :func:`hardware_string`).
        exporter: ONNX exporter for whole networks (``auto`` = dynamo like :func:`tas.deploy.export.export_onnx`).
        extra_widths: more grid widths per group beyond the supernet's candidates.
        warm_calls: untimed calls of the same model before each timed one. 0 (default): every
            timed call finds caches holding other models, as a layer's weights are inside a network
            bigger than the cache; 1 measures each layer with its weights hot (see the module doc).
        calibrate: random networks timed whole (besides the full and the smallest) to calibrate
            the table (:mod:`tas.deploy.latency.calibrate`); 0: none, the layers are scaled to the whole model.
        noise_limit, remeasure: entries whose repeats spread more than ``noise_limit`` (IQR / median)
            are measured again, up to ``remeasure`` times; a warning names what stays noisy.
    """
    check_timing_args(runtime, batch, threads, repeats, warmup)
    if not isinstance(warm_calls, int) or warm_calls < 0:
        raise TasError(f"warm_calls must be an integer >= 0, got {warm_calls!r}")
    t_start, load_before = time.perf_counter(), _load()
    key = cache_key(supernet, runtime, batch, threads, hardware, warm_calls)
    grid = {}
    for n, g in supernet.groups().items():
        ws = set(int(w) for w in g.widths) | set(int(w) for w in (extra_widths or {}).get(n, ())) | {g.channels}
        grid[n] = sorted(ws)
    entries = _entries(supernet, grid)
    items = [(k, idx, e.spec(point, batch)) for k, e in enumerate(entries) for idx, point in e.points()]
    c, h, w = supernet.input_size
    whole_spec = MicroSpec("model", None, c_in=int(c), c_out=0, in_hw=(int(h), int(w)), batch=batch)
    if timer is None and runtime == "torch-cuda":
        timer = cuda_event_timer()
    t = _Timing(MicroRuntime(runtime, threads, exporter), threads, repeats, warmup, timer, progress)
    try:
        whole_ms, calls = _measure_entries(t, supernet, entries, [(-1, (), whole_spec), *items], warm_calls)
        groups = {n: {"channels": g.channels, "widths": grid[n]} for n, g in supernet.graph.groups.items()}
        stages = {n: {"num_blocks": s.num_blocks, "depths": list(supernet.stage_depths[n])}
                  for n, s in supernet.graph.stages.items()}
        meta = {"repeats": repeats, "warmup": warmup, "warm_calls": warm_calls, "micro_models": len(items),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "timer": "perf_counter" if timer is None else getattr(timer, "__name__", type(timer).__name__),
                "notes": [], "noise": {"limit": noise_limit, "load_before": load_before, "remeasured": 0}}
        table = LatencyTable(key, entries, groups, stages, whole_ms, float(statistics.median(calls)), meta)
        _refresh(t, supernet, table, calibrate, noise_limit, remeasure)
    finally:
        t.rt.close()
    table.meta["build_s"] = round(time.perf_counter() - t_start, 3)
    if t.shared_pool is not None:
        table.meta["ort_thread_pool"] = "global" if t.shared_pool else "per-session"
    if table.clamped:
        table.meta["notes"].append(
            f"the layers at full width sum to {table.sum_full_ms:.4g} ms, more than the whole model's "
            f"{table.whole_ms:.4g} ms; the fixed overhead is clamped to 0 and every layer scaled by "
            f"{table.layer_scale:.4g}")
    if save:
        table.save(cache_path(key, cache_dir))
    return table


def _refresh(t: _Timing, supernet: Any, table: LatencyTable, calibrate: int, noise_limit: float, remeasure: int) -> None:
    """Measure the noisy entries again (``remeasure`` rounds), calibrate, record the noise, and warn
    when entries stay noisier than ``noise_limit``."""
    noise = table.meta.setdefault("noise", {"limit": noise_limit, "remeasured": 0})
    noise["limit"] = noise_limit
    for _ in range(remeasure):
        noisy = table.noisy_points(noise_limit)
        if not noisy:
            break
        items = [(k, idx, table.layers[k].spec(_point(table.layers[k], idx), int(table.key["batch"])))
                 for k, idx in noisy]
        _measure_entries(t, supernet, table.layers, items, int(table.meta.get("warm_calls", 0)), keep_better=True)
        noise["remeasured"] += len(noisy)
    table.set_calibration(None)
    cal = _calibrate(t, supernet, table, calibrate, int(table.meta.get("warm_calls", 0))) if calibrate > 0 else None
    table.set_calibration(cal)
    if cal is None and calibrate > 0:
        table.meta["notes"].append("no physical fit to the whole networks timed; the layers are scaled to the whole model")
    if cal is not None:
        table.meta["steady_ms"] = cal["samples"][0]["steady_ms"]
    spreads = np.concatenate([np.asarray(e.spread).ravel() for e in table.layers]) if table.layers else np.zeros(1)
    noise.update(load_after=_load(), entries=int(spreads.size), noisy=len(table.noisy_points(noise_limit)),
                 median_spread=float(np.median(spreads)), max_spread=float(spreads.max()))
    warn_if_noisy(table)


def _point(entry: LayerEntry, idx: tuple[int, ...]) -> dict[str, int]:
    """``{axis group: width}`` of ``entry``'s grid index ``idx``."""
    return {a: entry.widths[d][i] for d, (a, i) in enumerate(zip(entry.axes, idx))}


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def warn_if_noisy(table: LatencyTable) -> bool:
    """Print a warning when ``table``'s entries are noisier than its noise limit; True if so."""
    noise = table.meta.get("noise") or {}
    noisy = table.noisy_points(float(noise.get("limit", NOISE_LIMIT)))
    if not noisy:
        return False
    load = f"{noise.get('load_before', float('nan')):.1f} -> {noise.get('load_after', float('nan')):.1f}"
    print(f"warning: the latency table is too noisy to trust: {len(noisy)} of {noise.get('entries', '?')} entries "
          f"spread more than {noise.get('limit', NOISE_LIMIT):.0%} (IQR / median) over their repeats, after "
          f"measuring {noise.get('remeasured', 0)} again (1-min load average {load} on {os.cpu_count()} cores); "
          "its predictions may be off: rebuild it on a quieter machine (--rebuild)", file=sys.stderr)
    return True


def load_or_build(supernet: Any, runtime: str = "ort-cpu", batch: int = 1, threads: int = 2, repeats: int = 30,
                  warmup: int = 5, timer: Timer | None = None, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, hardware: str | None = None, rebuild: bool = False,
                  exporter: str = "auto", warm_calls: int = 0, calibrate: int = CALIBRATION_ARCHS,
                  noise_limit: float = NOISE_LIMIT, remeasure: int = 1) -> LatencyTable:
    """The cached table for this supernet and setting, else a new one (measured and cached).

    A cached table whose grid misses some of the supernet's candidate widths is rebuilt over the
    union of both grids (so alternating search spaces do not thrash the cache). A cached table
    with entries noisier than ``noise_limit`` that were never measured again (``remeasure=0``)
    has them measured again and is calibrated again (:func:`refresh_noisy`); a warning names
    what stays noisy, on every load.
    ``table.source`` says ``cache`` or ``built``; ``table.path`` where it lives.
    """
    check_timing_args(runtime, batch, threads, repeats, warmup)
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
                    # noisy entries a build already measured again are not measured on every load
                    # (a busy machine would make each search pay for it): the warning remains
                    if table.noisy_points(noise_limit) and not table.meta.get("noise", {}).get("remeasured"):
                        refresh_noisy(table, supernet, timer, threads, repeats, warmup, progress, exporter, calibrate,
                                      noise_limit, remeasure)
                    else:
                        warn_if_noisy(table)
                    return table
                extra = {n: table.groups[n]["widths"] for n in table.groups}
    return build_latency_table(supernet, runtime, batch, threads, repeats, warmup, timer, cache_dir, progress,
                               hardware, save=True, exporter=exporter, extra_widths=extra, warm_calls=warm_calls,
                               calibrate=calibrate, noise_limit=noise_limit, remeasure=remeasure)


def refresh_noisy(table: LatencyTable, supernet: Any, timer: Timer | None = None, threads: int | None = None,
                  repeats: int | None = None, warmup: int | None = None, progress: bool = True,
                  exporter: str = "auto", calibrate: int = CALIBRATION_ARCHS, noise_limit: float = NOISE_LIMIT,
                  remeasure: int = 1) -> LatencyTable:
    """Measure ``table``'s entries noisier than ``noise_limit`` again (as the build does), calibrate
    it again, and save it where it was loaded from. Settings default to the table's own."""
    print(f"note: {len(table.noisy_points(noise_limit))} entries of the cached latency table spread more than "
          f"{noise_limit:.0%} over their repeats; measuring them again", file=sys.stderr)
    runtime = str(table.key["runtime"])
    if timer is None and runtime == "torch-cuda":
        timer = cuda_event_timer()
    t = _Timing(MicroRuntime(runtime, int(threads or table.key["threads"]), exporter), int(threads or table.key["threads"]),
                int(repeats or table.meta.get("repeats", 30)), int(warmup if warmup is not None else table.meta.get("warmup", 5)),
                timer, progress)
    table.meta.setdefault("notes", [])
    try:
        _refresh(t, supernet, table, calibrate, noise_limit, remeasure)
    finally:
        t.rt.close()
    if table.path is not None:
        table.save(table.path)
    return table
