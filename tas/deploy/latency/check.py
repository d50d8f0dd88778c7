"""The prediction check: a latency table's prediction for a slim network against the network
measured end to end, beside its original."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from ..export import export_onnx
from .measure import measure_onnx
from .table import LatencyTable

__all__ = ["check_prediction", "measure_pair"]


def check_prediction(table: LatencyTable, slim: torch.nn.Module, original: torch.nn.Module, arch: Any,
                     batch: int, threads: int) -> dict[str, Any]:
    """Export ``slim`` (the network of ``arch``) and ``original`` to ONNX and measure both, twice.

    First the way the table's layers were timed (its ``warm_calls``: cold by default), which the
    prediction and a latency budget refer to; then in the steady state (each timed call right after
    an untimed one, as when a network is served back to back), reported beside it. A network whose
    weights fit in the cache runs relatively faster in the steady state than its cold layers
    predict; the table's calibration (or, without one, its ``steady_scale``) predicts that timing.

    Returns the ``metrics.json`` entries: predicted and measured ms and ratios of both networks,
    ``prediction_error`` (ms), ``ratio_prediction_error`` (both parts of a ratio timed side by
    side: free of the machine's drift), ``full_prediction_error`` (that drift, seen on the
    original, which the table timed whole), ``budget_latency_ratio`` (the ratio the search's budget
    saw: :meth:`LatencyTable.exact`'s) and the steady-state figures (predicted ones when the
    table predicts that timing).
    """
    full_ms, slim_ms, steady_full_ms, steady_ms = measure_pair(
        slim, original, arch.input_size, batch, threads, int(table.meta.get("warm_calls", 0)))
    full = {n: g["channels"] for n, g in arch.groups.items()}, {n: s["blocks"] for n, s in arch.stages.items()}
    predicted, predicted_full = table.predict_arch(arch, "cold"), table.predict(*full, "cold")
    predicted_ratio = predicted / predicted_full
    out = {"predicted_latency_ms": predicted, "measured_latency_ms": slim_ms, "full_latency_ms": full_ms,
           "predicted_full_latency_ms": predicted_full, "full_prediction_error": predicted_full / full_ms - 1,
           "predicted_latency_ratio": predicted_ratio, "measured_latency_ratio": slim_ms / full_ms,
           "budget_latency_ratio": table.exact_arch(arch) / table.full(),
           "prediction_error": predicted / slim_ms - 1,
           "ratio_prediction_error": predicted_ratio / (slim_ms / full_ms) - 1,
           "steady_latency_ms": steady_ms, "steady_full_latency_ms": steady_full_ms,
           "steady_latency_ratio": steady_ms / steady_full_ms, "latency_runtime": table.key.get("runtime")}
    steady, steady_full = table.predict_arch(arch, "steady"), table.predict(*full, "steady")
    if steady is not None:
        out.update(predicted_steady_latency_ms=steady, steady_prediction_error=steady / steady_ms - 1,
                   predicted_steady_latency_ratio=steady / steady_full,
                   steady_ratio_prediction_error=steady / steady_full / (steady_ms / steady_full_ms) - 1)
    return out


#: timed calls per model in :func:`measure_pair`: mobilenetv2_100 at 128 px, batch 1 (1.1 ms, 2
#: threads), measured five times in fresh processes, gave cold ratios 0.683-0.758 with 30 repeats
#: and 0.713-0.720 with 100 (steady: 0.670-0.716 and 0.674-0.712)
PAIR_REPEATS = 100
#: fresh ONNX Runtime processes per timing in :func:`measure_pair`, whose median ratio it reports.
#: One slim resnet18 (64 px, batch 8, 2 threads) measured five times in a row: cold ratios
#: 0.46-0.50 and steady 0.44-0.48 with 100 repeats, 0.48-0.50 and 0.43-0.48 with 300. The spread
#: is between processes (the machine's state), not within one, so more repeats do not remove it.
PAIR_PROCESSES = 3


def measure_pair(slim: torch.nn.Module, original: torch.nn.Module, input_size: Sequence[int], batch: int,
                 threads: int, warm_calls: int = 0, repeats: int = PAIR_REPEATS, processes: int = PAIR_PROCESSES
                 ) -> tuple[float, float, float, float]:
    """``(original ms, slim ms)`` measured side by side, cold (each timed call after ``warm_calls``
    untimed ones of the same model: 0, right after the other model's) and then in the steady state
    (after one): ``(original cold, slim cold, original steady, slim steady)``, ONNX Runtime on the CPU,
    medians of ``repeats`` interleaved calls.

    Each timing is measured in ``processes`` fresh processes, cold and steady alternating; the
    original's figure is its median over them and the slim network's that times the median of the
    per-process ratios (both halves of a ratio share a process's state, so the ratio is the steadier
    figure, and ``slim / original`` is then exactly that median ratio). With ``warm_calls=1`` the
    table's timing is the steady state, and one set of processes serves both."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    runs: dict[int, list[tuple[float, float]]] = {warm_calls: [], 1: []} if warm_calls != 1 else {1: []}
    with tempfile.TemporaryDirectory(prefix="tas-latency-check-") as tmp:
        paths = [Path(tmp) / "original.onnx", Path(tmp) / "slim.onnx"]
        # timed, not served: a parity check would only add a failure mode (a supernet's slim network
        # mid-search, with untrained BN statistics, has logits large enough to miss a 1e-4 atol)
        export_onnx(original.cpu().eval(), paths[0], input_size, check=False)
        export_onnx(slim.cpu().eval(), paths[1], input_size, check=False)
        for _ in range(processes):
            for warm in runs:
                full_ms, slim_ms = measure_onnx(paths, input_size, batch=batch, threads=threads, repeats=repeats,
                                                warm_calls=warm)
                runs[warm].append((full_ms, slim_ms))
    cold, steady = _paired_median(runs[warm_calls]), _paired_median(runs[1])
    return (*cold, *steady)


def _paired_median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """``(median original ms, that × the median ratio)`` of ``(original ms, slim ms)`` pairs."""
    full = statistics.median(f for f, _ in pairs)
    return full, full * statistics.median(s / f for f, s in pairs)
