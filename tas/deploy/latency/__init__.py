"""Latency look-up tables and the differentiable expected latency of a supernet (latency-aware TAS).

FLOPs do not predict latency (``ALGORITHMS.md`` §5: odd widths can be slower than wider ones), so
a latency budget needs measurements. :func:`build_latency_table` times, for every prunable conv and
linear layer of a supernet's model, a tiny single-layer network (conv + BN + ReLU with that layer's
kernel, stride, padding, groups and input H×W; a linear layer alone; a timm ``Conv2dSame``'s dynamic
TF "same" padding is recorded as the pads it applies at that H×W, asymmetric ones as a pad before
the conv) at every point of the layer's
width grid:

* a conv whose input and output groups are both searched: a 2-D grid, input × output candidates;
* one side fixed (the image, an SE bottleneck, the classes): a 1-D grid over the other side;
* depthwise (input and output are one group): a 1-D grid over that group;
* both sides fixed: one measurement (it still counts only while its block is kept).

Everything else the network does (residual adds, pooling, activations between layers, session
start) is one fixed **overhead**, measured once: the whole original model's latency minus the sum
of its layers' full-width entries. When the layers sum to more (each timed alone reads its input
cold), the overhead is 0 and every entry is scaled by ``whole / Σ layers`` instead
(``layer_scale``), so the full model is always predicted at its measured latency.

Calibration (:mod:`.calibrate`): the build also times the full, the smallest and a few random
networks of the space whole, cold and in the steady state, and fits per timing ``overhead + scale
× Σ entries + per_mb × Σ weight MB`` by least squares; a calibrated table predicts each timing
(:meth:`LatencyTable.predict`) and budgets the blend of the two ratios. Noise: every entry keeps the
spread of its repeats, noisy ones are measured again, and the table records the load average
before and after; :func:`warn_if_noisy` says when it stays too noisy to trust. ``torch-cuda``
times with CUDA events (:func:`cuda_event_timer`).

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

Runtimes: ``ort-cpu`` (ONNX Runtime with the session settings of :func:`tas.deploy.latency.ort_latency`;
each micro-model is written as the ONNX nodes the TorchScript exporter produces for it in eval mode,
``Conv`` with the BN folded in + ``Relu`` (``Gemm`` for a linear layer), built directly with
``onnx.helper``: ~2 ms each instead of ~70 ms through the exporter; the whole model is exported like
:func:`tas.deploy.export.export_onnx` does. The timing runs in a fresh interpreter where all sessions share
one global intra-op pool of ``threads`` threads: with ORT's default pool per session, hundreds of
sessions spin hundreds of threads against each other, 100x slower and with inflated medians),
``torch-cpu`` (eager, ``torch.set_num_threads(threads)``) and ``torch-cuda`` (CUDA events, synchronised).
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

# One module per job: micro (what is timed), measure (timing), table (the table and its costs),
# build (measuring a table, re-measuring its noisy entries, calibrating it, and its cache),
# calibrate (the fit to whole networks), check (a prediction against the exported networks);
# the command line is tas.commands.latency. Code outside the package imports the package and calls
# through it (``latency.load_or_build(...)``), so a name replaced here
# (``monkeypatch.setattr(tas.deploy.latency, "load_or_build", ...)``) is the one it calls.
from .build import (CALIBRATION_ARCHS, DEFAULT_CACHE_DIR, NOISE_LIMIT, build_latency_table, cache_key, cache_path,
                    load_or_build, refresh_noisy, warn_if_noisy)
from .calibrate import calibration_archs, fit_calibration, fit_timing
from .check import check_prediction, measure_pair
from .measure import (RUNTIMES, cuda_event_timer, hardware_string, measure, measure_onnx, measure_stats, ort_latency,
                      perf_timer, spread)
from .micro import MicroSpec, Runnable
from .align import aligned_candidates
from .table import TIMINGS, LatencyTable, LayerEntry, budget_grids

from .measure import Timer
from .table import FORMAT_VERSION

__all__ = ["RUNTIMES", "DEFAULT_CACHE_DIR", "MicroSpec", "Runnable", "LayerEntry", "LatencyTable",
           "build_latency_table", "load_or_build", "cache_key", "cache_path", "hardware_string",
           "aligned_candidates", "check_prediction", "measure_pair", "measure", "measure_onnx", "ort_latency", "perf_timer",
           "CALIBRATION_ARCHS", "NOISE_LIMIT", "TIMINGS", "refresh_noisy", "warn_if_noisy", "calibration_archs",
           "fit_calibration", "fit_timing", "cuda_event_timer", "measure_stats", "spread", "budget_grids", "Timer",
           "FORMAT_VERSION"]
