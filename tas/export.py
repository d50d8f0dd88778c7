"""Export: a (slim) network → a self-contained ONNX file, checked against torch, and timed with ONNX Runtime.

The last step of the pipeline. :func:`export_onnx` writes one ``.onnx`` file with a dynamic batch
axis (input ``input``, output ``logits``), validates it with the ONNX checker, and proves it computes
what the torch model computes (ONNX Runtime vs torch at batch 1 and batch 3, the second proving the
batch axis is really dynamic). :func:`ort_latency` times several ONNX files side by side, interleaved,
so that whatever else the machine is doing slows all of them alike.

The command line exports a run directory's model and compares it with its teacher::

    python -m tas.export runs/slim --output slim.onnx
    python -m tas.export runs/slim --output slim.onnx --teacher runs/teacher --batch-sizes 1 32

The teacher is ``--teacher``, else the run recorded in the slim run's config (``arch.meta.teacher``
or ``search.teacher``) if it still exists, else the original architecture rebuilt with random
weights (fine for FLOPs and latency). The table shows FLOPs, params, ONNX size and ORT CPU latency
of both, and the speed-up; the last line of output is the same summary as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import CheckpointError, ModelError, TasError

__all__ = ["export_onnx", "check_parity", "ort_latency", "export_run", "summary_table", "main", "MIN_OPSET", "INPUT_NAME",
           "OUTPUT_NAME"]

MIN_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: batch sizes the parity check runs at (the second proves the batch axis is dynamic)
PARITY_BATCHES = (1, 3)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                    opset_version=opset, verbose=False, external_data=False)
    if program is None:  # pragma: no cover  (only when f is given)
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path), external_data=False)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _export_to(model: nn.Module, example: torch.Tensor, path: Path, opset: int,
               exporter: str = "auto") -> tuple[str, str | None]:
    """Write ``model`` to ``path``; returns ``(exporter used, why dynamo was not)``.

    The dynamo exporter writes into a scratch directory of its own beside ``path``, so a failed
    attempt is cleaned up by removing that directory alone: ``path``'s neighbours (other models
    of a latency-table build, the user's files) are never touched.
    """
    reason = None
    if exporter in ("auto", "dynamo"):
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".dynamo", dir=path.parent))
        try:
            _export_dynamo(model, example, scratch / path.name, opset)
            _make_self_contained(scratch / path.name)  # any external data lives in scratch, going below
            os.replace(scratch / path.name, path)
            return "dynamo", None
        except Exception as e:  # noqa: BLE001  (any failure of torch.export / onnxscript: fall back)
            if exporter == "dynamo":
                raise TasError(f"the dynamo ONNX exporter failed: {_one_line(e)}") from None
            reason = f"{type(e).__name__}: {_one_line(e)}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # whatever the attempt left, and only that
    try:
        _export_torchscript(model, example, path, opset)
    except Exception as e:  # noqa: BLE001
        why = f" (the dynamo exporter failed first: {reason})" if reason else ""
        raise TasError(f"ONNX export failed: {type(e).__name__}: {_one_line(e)}{why}") from None
    return "torchscript", reason


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_self_contained(path: Path) -> None:
    """Pull any external-data tensors back into the file (no-op when there are none)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return
    proto = onnx.load(str(path))  # loads the external data from path's directory
    if proto.ByteSize() >= 2**31:
        raise TasError(f"the ONNX model is {proto.ByteSize() / 2**30:.1f} GiB; a self-contained file "
                       "must stay under protobuf's 2 GiB limit")
    onnx.save(proto, str(path), save_as_external_data=False)


def _check_structure(path: Path) -> int:
    """ONNX checker + names + dynamic batch axis; returns the default-domain opset."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as e:
        raise TasError(f"the exported ONNX model is invalid: {_one_line(e)}") from None
    proto = onnx.load(str(path), load_external_data=False)
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise TasError(f"the exported ONNX model has inputs {[i.name for i in inputs]} and outputs "
                       f"{[o.name for o in proto.graph.output]}, expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]")
    for value in (inputs[0], proto.graph.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise TasError(f"the exported ONNX model's {value.name!r} has a fixed batch size {dim0.dim_value}, "
                           "not a dynamic batch axis")
    opsets = {o.domain: o.version for o in proto.opset_import}
    return int(opsets.get("", opsets.get("ai.onnx", 0)))


def _session(path: str | os.PathLike, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime's own exception types)
        raise TasError(f"ONNX Runtime cannot load {path}: {_one_line(e)}") from None


def check_parity(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], atol: float = 1e-4,
                 batches: Sequence[int] = PARITY_BATCHES, seed: int = 0, threads: int | None = None) -> float:
    """Max abs difference of ONNX Runtime (CPU) vs ``model`` on random inputs at each batch size.

    Raises :class:`TasError` naming the difference when it exceeds ``atol``, or when the ONNX model
    cannot run at one of the batch sizes (a batch axis that is not really dynamic).
    """
    threads = threads or min(2, os.cpu_count() or 1)
    session = _session(path, threads)
    gen = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    worst = 0.0
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            x = torch.randn(b, *input_size, generator=gen)
            with torch.no_grad():
                ref = model(x.to(device)).float().cpu().numpy()
            try:
                (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            except Exception as e:  # noqa: BLE001
                raise TasError(f"ONNX Runtime failed on {path} at batch {b}: {_one_line(e)}") from None
            if out.shape != ref.shape:
                raise TasError(f"ONNX output at batch {b} has shape {list(out.shape)}, torch gives {list(ref.shape)}")
            if not np.isfinite(out).all() or not np.isfinite(ref).all():
                raise TasError(f"non-finite outputs at batch {b} (ONNX or torch); cannot check parity")
            worst = max(worst, float(np.abs(out - ref).max()))
    finally:
        model.train(was_training)
    if worst > atol:
        raise TasError(f"ONNX Runtime and torch disagree: max abs diff {worst:.3g} > atol {atol:g} ({path})")
    return worst


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] | None = None, opset: int = 18,
                check: bool = True, atol: float = 1e-4, exporter: str = "auto") -> dict[str, Any]:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis, and check it.

    The file is written atomically (into a private temporary directory next to ``path``, then
    renamed), so on any failure ``path`` is left as it was. The model is exported on the CPU in eval
    mode; the caller's model is not changed (a copy is moved when it lives elsewhere).

    Args:
        model: any network taking one ``(N, C, H, W)`` tensor and returning logits.
        path: the ``.onnx`` file to write (its directory is created).
        input_size: ``(C, H, W)`` of one input; default: the size the architecture of a slim network
            (``model.tas_arch``, set by :func:`tas.materialize`) was searched at.
        opset: ONNX opset, at least 17.
        check: compare ONNX Runtime with torch at batch 1 and 3 (max abs diff ≤ ``atol``) before
            the file is put in place; the ONNX checker always runs.
        exporter: ``auto`` (dynamo, falling back to the TorchScript exporter), ``dynamo`` or
            ``torchscript``.

    Returns:
        ``{"path", "opset", "exporter", "max_abs_diff", "size_bytes"}`` (``max_abs_diff`` is None
        without ``check``), plus ``"fallback_reason"`` when the dynamo exporter failed.
    """
    if int(opset) < MIN_OPSET:
        raise TasError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise TasError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if input_size is None:
        arch = getattr(model, "tas_arch", None)
        if arch is None:
            raise TasError("export_onnx: give input_size=(C, H, W); only a slim network from tas.materialize "
                           "knows its own")
        input_size = arch.input_size
    input_size = [int(x) for x in input_size]
    if len(input_size) != 3 or min(input_size) < 1:
        raise TasError(f"input_size must be [C, H, W], got {input_size}")
    path = Path(path)
    if path.is_dir():
        raise TasError(f"--output {path} is a directory; give a file name ending in .onnx")
    if any(p.device.type != "cpu" for p in model.parameters()) or any(b.device.type != "cpu" for b in model.buffers()):
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = workdir / "model.onnx"
        example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))  # batch 2: no 0/1 specialisation
        used, reason = _export_to(model, example, tmp, int(opset), exporter)
        _make_self_contained(tmp)
        real_opset = _check_structure(tmp)
        diff = check_parity(model, tmp, input_size, atol=atol) if check else None
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, Any] = {"path": str(path), "opset": real_opset, "exporter": used, "max_abs_diff": diff,
                           "size_bytes": size}
    if reason:
        out["fallback_reason"] = reason
    return out


# ---------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------
def ort_latency(paths: Sequence[str | os.PathLike], input_size: Sequence[int], batch: int, repeats: int = 30,
                warmup: int = 5, threads: int = 2) -> list[float]:
    """Median ONNX Runtime CPU latency (ms) of each model, measured interleaved.

    Every repeat runs each model once, round-robin, starting one model further along each time, so
    slow-downs of the machine are shared by all models rather than landing on whichever was timed
    during them. The models run in a fresh process sharing one ONNX Runtime thread pool
    (:func:`tas.latency.measure_onnx`, also how latency tables and predictions are measured): with
    a pool per session, each session's threads keep spinning after its run and slow down the next
    model, which made interleaved timings of near-identical models differ by up to 2x here.
    """
    from .latency import measure_onnx

    if not paths:
        return []
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise TasError(f"need repeats >= 1, warmup >= 0, batch >= 1, threads >= 1 "
                       f"(got {repeats}, {warmup}, {batch}, {threads})")
    for p in paths:
        _session(p, 1)  # a clear error for a file ONNX Runtime cannot load, before the worker starts
    return measure_onnx(paths, input_size, batch=batch, threads=threads, repeats=repeats, warmup=warmup)


# ---------------------------------------------------------------------------------------------
# run directories
# ---------------------------------------------------------------------------------------------
def _teacher_candidates(config: Mapping[str, Any]) -> list[str]:
    found = []
    arch = config.get("arch")
    if isinstance(arch, Mapping) and isinstance(arch.get("meta"), Mapping):
        found.append(arch["meta"].get("teacher"))
    if isinstance(config.get("search"), Mapping):
        found.append(config["search"].get("teacher"))
    found.append(config.get("teacher"))
    return [t for t in found if isinstance(t, str) and t]


def _resolve_teacher(config: Mapping[str, Any], teacher: str | os.PathLike | None
                     ) -> tuple[nn.Module | None, str | None]:
    """``(teacher model, where it came from)``; ``(None, None)`` when there is nothing to compare with."""
    from .rundir import is_finished_run, load_run

    if teacher is not None:
        model, tconfig = load_run(teacher)
        _check_teacher(config, tconfig, f"--teacher {teacher}")
        return model, f"run {teacher}"
    for cand in _teacher_candidates(config):
        if Path(cand).is_dir() and is_finished_run(cand):
            try:
                model, tconfig = load_run(cand)
                _check_teacher(config, tconfig, f"recorded teacher {cand}")
            except TasError as e:
                print(f"note: ignoring the recorded teacher ({e}); using the rebuilt original", file=sys.stderr)
                break
            return model, f"run {cand}"
    arch = config.get("arch")
    if isinstance(arch, Mapping):
        from .models.factory import create_model

        name, kwargs = arch.get("model"), arch.get("model_kwargs")
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise CheckpointError("the run's 'arch' has no 'model' / 'model_kwargs' to rebuild the original from")
        torch.manual_seed(0)
        return create_model(name, **dict(kwargs)).eval(), f"{name} rebuilt (random weights)"
    return None, None


def _check_teacher(config: Mapping[str, Any], tconfig: Mapping[str, Any], what: str) -> None:
    if "arch" in tconfig:
        raise ModelError(f"{what} is a pruned network; give the original's run")
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
    from .flops import count_flops, count_params
    from .rundir import load_run

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
    tmodel, tsource = _resolve_teacher(config, teacher) if compare else (None, None)

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
    from .cli import format_table

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


def build_parser(prog: str | None = "python -m tas.export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory to export (config.json + model.safetensors)")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--teacher", default=None, help="run directory of the original network to compare with "
                   "(default: the recorded teacher if it exists, else the original rebuilt with random weights)")
    p.add_argument("--no-compare", action="store_true", help="only export and time the run's own model")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes to time (default: 1 32)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch size (default: 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    p.add_argument("--opset", type=int, default=18, help=f"ONNX opset, at least {MIN_OPSET} (default: 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, ORT vs torch (default: 1e-4)")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = "python -m tas.export") -> int:
    """Parse flags, export, print the table and (last line) the JSON summary; returns 0.

    Bad input raises :class:`TasError`; ``python -m tas.export`` runs this behind
    :func:`tas.cli.run_main` (one ``error:`` line, exit code 2). Pipelines wanting the summary as a
    dict call :func:`export_run`.
    """
    from .checkpoint import atomic_write_json
    from .cli import parse_args

    args = parse_args(build_parser(prog), argv)
    summary = export_run(args.run_dir, args.output, teacher=args.teacher, batch_sizes=args.batch_sizes,
                         repeats=args.repeats, warmup=args.warmup, threads=args.threads, opset=args.opset,
                         atol=args.atol, compare=not args.no_compare)
    info = summary["onnx"]
    print(f"wrote {info['path']} ({info['size_bytes'] / 1e6:.2f} MB, opset {info['opset']}, {info['exporter']} "
          f"exporter, max |ORT - torch| = {info['max_abs_diff']:.2e})")
    if "fallback_reason" in info:
        print(f"note: the dynamo exporter failed ({info['fallback_reason']}); used the TorchScript exporter")
    if summary["teacher_source"]:
        print(f"teacher: {summary['teacher_source']}")
    print(summary_table(summary))
    if args.json:
        atomic_write_json(args.json, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from .cli import run_main

    sys.exit(run_main(main))
