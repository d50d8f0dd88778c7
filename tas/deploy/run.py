"""Export a finished run: its network to ONNX, checked, and timed against its teacher.

What ``tas export`` (:mod:`tas.commands.export`) does::

    python -m tas.export runs/slim --output slim.onnx
    python -m tas.export runs/slim --output slim.onnx --teacher runs/teacher --batch-sizes 1 32

The teacher is ``--teacher``, else the run recorded in the slim run's config (``arch.meta.teacher``
or ``search.teacher``) if it still exists, else the original architecture rebuilt with random
weights (fine for FLOPs and latency). The table shows FLOPs, params, ONNX size and ORT CPU latency
of both, and the speed-up; the last line of output is the same summary as JSON.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..cli import format_table
from ..errors import CheckpointError, ModelError, TasError
from ..io.rundir import is_finished_run
from ..models.factory import create_model
from ..prune.flops import count_flops, count_params
from ..prune.load import load_original, load_run
from .export import MIN_OPSET, export_onnx
from .latency import ort_latency

__all__ = ["export_run", "resolve_teacher", "summary_table"]


def _teacher_candidates(config: Mapping[str, Any]) -> list[str]:
    found = []
    arch = config.get("arch")
    if isinstance(arch, Mapping) and isinstance(arch.get("meta"), Mapping):
        found.append(arch["meta"].get("teacher"))
    if isinstance(config.get("search"), Mapping):
        found.append(config["search"].get("teacher"))
    found.append(config.get("teacher"))
    return [t for t in found if isinstance(t, str) and t]


def resolve_teacher(config: Mapping[str, Any], teacher: str | os.PathLike | None
                    ) -> tuple[nn.Module | None, str | None]:
    """``(teacher model, where it came from)`` for the run whose config is ``config``; ``(None, None)``
    when there is nothing to compare with. ``teacher`` (a run directory) is taken as given; else the
    recorded teacher run if it still exists and fits; else the original rebuilt with random weights."""
    if teacher is not None:
        model, tconfig = load_original(teacher, f"--teacher {teacher}")
        _check_teacher(config, tconfig, f"--teacher {teacher}")
        return model, f"run {teacher}"
    for cand in _teacher_candidates(config):
        if Path(cand).is_dir() and is_finished_run(cand):
            try:
                model, tconfig = load_original(cand, f"recorded teacher {cand}")
                _check_teacher(config, tconfig, f"recorded teacher {cand}")
            except TasError as e:
                print(f"note: ignoring the recorded teacher ({e}); using the rebuilt original", file=sys.stderr)
                break
            return model, f"run {cand}"
    arch = config.get("arch")
    if isinstance(arch, Mapping):
        name, kwargs = arch.get("model"), arch.get("model_kwargs")
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise CheckpointError("the run's 'arch' has no 'model' / 'model_kwargs' to rebuild the original from")
        torch.manual_seed(0)
        return create_model(name, **dict(kwargs)).eval(), f"{name} rebuilt (random weights)"
    return None, None


def _check_teacher(config: Mapping[str, Any], tconfig: Mapping[str, Any], what: str) -> None:
    """Refuse an (original) teacher of another model or input channels than the slim run's."""
    arch = config.get("arch")
    if isinstance(arch, Mapping) and arch.get("model") and arch["model"] != tconfig.get("model"):
        raise ModelError(f"{what} is a {tconfig.get('model')}, the slim network was pruned from {arch['model']}")
    if tconfig["model_kwargs"]["in_chans"] != config["model_kwargs"]["in_chans"]:
        raise ModelError(f"{what} takes {tconfig['model_kwargs']['in_chans']} input channels, the slim network "
                         f"{config['model_kwargs']['in_chans']}")


def export_run(run_dir: str | os.PathLike, output: str | os.PathLike, teacher: str | os.PathLike | None = None,
               batch_sizes: Sequence[int] = (1, 32), repeats: int = 30, warmup: int = 5, threads: int = 2,
               opset: int = 18, atol: float = 1e-4, compare: bool = True) -> dict[str, Any]:
    """Export a run directory's model to ``output`` and time it against its teacher.

    Everything that can fail because of the input (run dir, teacher) is checked before ``output``
    is written. Returns a JSON-able summary: ``onnx`` (what :func:`export_onnx` returned),
    ``models`` (per ``slim``/``teacher``: flops, params, onnx_bytes, ``latency_ms`` by batch size),
    ``speedup`` by batch size (teacher latency / slim latency), ``flops_ratio`` and ``teacher_source``.
    """
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise TasError(f"--batch-sizes must be positive integers, got {batch_sizes}")
    if repeats < 1:
        raise TasError(f"--repeats must be at least 1, got {repeats}")
    if int(opset) < MIN_OPSET:
        raise TasError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    output = Path(output)
    if output.is_dir():
        raise TasError(f"--output {output} is a directory; give a file name ending in .onnx")
    slim, config = load_run(run_dir)
    input_size = list(config["input_size"])
    tmodel, tsource = resolve_teacher(config, teacher) if compare else (None, None)

    info = export_onnx(slim, output, input_size, opset=opset, check=True, atol=atol)
    models: dict[str, dict[str, Any]] = {
        "slim": {"flops": count_flops(slim, input_size), "params": count_params(slim), "onnx_bytes": info["size_bytes"]}}
    summary: dict[str, Any] = {"run_dir": str(run_dir), "input_size": input_size, "onnx": info, "models": models,
                               "teacher_source": tsource, "threads": threads, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="tas-export-") as tmp:
        paths = [output]
        if tmodel is not None:
            tinfo = export_onnx(tmodel, Path(tmp) / "teacher.onnx", input_size, opset=opset, check=True, atol=atol)
            models["teacher"] = {"flops": count_flops(tmodel, input_size), "params": count_params(tmodel),
                                 "onnx_bytes": tinfo["size_bytes"]}
            paths = [Path(tmp) / "teacher.onnx", output]
        lat: dict[str, list[float]] = {}
        for b in batch_sizes:
            lat[str(b)] = ort_latency(paths, input_size, b, repeats=repeats, warmup=warmup, threads=threads)
    names = ["teacher", "slim"] if tmodel is not None else ["slim"]
    for i, name in enumerate(names):
        models[name]["latency_ms"] = {b: v[i] for b, v in lat.items()}
    if tmodel is not None:
        summary["flops_ratio"] = models["slim"]["flops"] / models["teacher"]["flops"]
        summary["params_ratio"] = models["slim"]["params"] / models["teacher"]["params"]
        summary["speedup"] = {b: v[0] / v[1] for b, v in lat.items()}
    return summary


def summary_table(summary: Mapping[str, Any]) -> str:
    """The printed comparison: one row per model, then the speed-up."""
    models = summary["models"]
    batches = list(models["slim"]["latency_ms"])
    header = ["model", "MFLOPs", "params (M)", "ONNX (MB)"] + [f"ORT ms @ bs {b}" for b in batches]
    rows = []
    for name in ("teacher", "slim"):
        if name not in models:
            continue
        m = models[name]
        rows.append([name, f"{m['flops'] / 1e6:.2f}", f"{m['params'] / 1e6:.3f}", f"{m['onnx_bytes'] / 1e6:.2f}"]
                    + [f"{m['latency_ms'][b]:.3f}" for b in batches])
    if "speedup" in summary:
        rows.append(["slim / teacher", f"{summary['flops_ratio']:.3f}", f"{summary['params_ratio']:.3f}",
                     f"{models['slim']['onnx_bytes'] / models['teacher']['onnx_bytes']:.3f}"]
                    + [f"{summary['speedup'][b]:.2f}x faster" for b in batches])
    return format_table(rows, header)
