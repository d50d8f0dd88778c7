"""Export: a (slim) network → a self-contained ONNX file, checked against torch.

The last step of the pipeline. :func:`export_onnx` writes one ``.onnx`` file with a dynamic batch
axis (input ``input``, output ``logits``), validates it with the ONNX checker, and proves it computes
what the torch model computes (ONNX Runtime vs torch at batch 1 and batch 3, the second proving the
batch axis is really dynamic). Timing ONNX files is :mod:`tas.deploy.latency`'s job
(:func:`~tas.deploy.latency.ort_latency`); exporting a whole run directory against its teacher is
:mod:`tas.deploy.run`'s.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import TasError

__all__ = ["export_onnx", "export_graph", "check_parity", "ort_session", "MIN_OPSET", "INPUT_NAME", "OUTPUT_NAME"]

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


def export_graph(model: nn.Module, example: torch.Tensor, path: Path, opset: int,
                 exporter: str = "auto") -> tuple[str, str | None]:
    """Write ``model`` to ``path`` (no checks: :func:`export_onnx` adds them); returns ``(exporter
    used, why dynamo was not)``.

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
    import onnx  # why: slow to import (~1 s); only exporting needs it
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
    import onnx  # why: slow to import (~1 s); only exporting needs it

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


def ort_session(path: str | os.PathLike, threads: int):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads, sequential, every
    graph optimisation on (the settings every latency in tas is measured with); a file ONNX Runtime
    cannot load raises :class:`~tas.errors.TasError`."""
    import onnxruntime as ort  # why: slow to import; only checking and timing ONNX files need it

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
    session = ort_session(path, threads)
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
            (``model.tas_arch``, set by :func:`tas.prune.materialize`) was searched at.
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
            raise TasError("export_onnx: give input_size=(C, H, W); only a slim network from tas.prune.materialize "
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
        used, reason = export_graph(model, example, tmp, int(opset), exporter)
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
