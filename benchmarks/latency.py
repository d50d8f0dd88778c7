"""Do FLOPs savings turn into ONNX Runtime CPU speed-ups? Uniformly thinned ResNets, timed.

For ``cifar_resnet20`` (3x28x28) and ``resnet50`` (3x160x160) this builds slim networks keeping
70 %, 50 % and 30 % of the FLOPs by scaling every channel group's width by the same multiplier
(depth untouched), in two variants:

* ``div32`` / ``div16`` / ``div8`` -- widths rounded to multiples of 32, 16 or 8 (8 is the search
  spaces' default divisor);
* ``odd``  -- widths ``round(r * C)`` with no rounding (e.g. 45 or 179 channels).

The multiplier starts at ``sqrt(ratio)`` and is refined by bisection on the exact FLOPs ratio of
:meth:`~tas.nas.supernet.Supernet.make_arch`. Every network is materialised with random weights,
exported with :func:`tas.deploy.export.export_onnx` (parity-checked) and timed with
:func:`tas.deploy.latency.ort_latency`, interleaved with the original network (and all the other slim
variants of the same model), median of the repeats. Reported per row: the speed-up (original
latency / slim latency) and the *realised fraction* = speed-up / (1 / FLOPs ratio) -- 1.0 would mean
latency falls exactly as fast as FLOPs.

    python benchmarks/latency.py            # the full table (< 10 min on 2 cores), docs/benchmarks_latency.md
    python benchmarks/latency.py --quick    # ~1 min smoke run (50 % only, few repeats)

Not a test: nothing here asserts; the markdown table is the result.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
import timm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402  (registers cifar_resnet* with timm)
from benchkit import write_report  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.deploy.export import export_onnx  # noqa: E402
from tas.deploy.latency import ort_latency  # noqa: E402
from tas.prune.materialize import materialize  # noqa: E402
from tas.nas.supernet import create_supernet  # noqa: E402

#: name, timm kwargs, input size, the larger batch size, repeats (batch 1, larger batch) in full mode
MODELS = [
    ("cifar_resnet20", {"num_classes": 10, "in_chans": 3}, (3, 28, 28), 32, (400, 100)),
    ("resnet50", {"num_classes": 1000, "in_chans": 3}, (3, 160, 160), 8, (60, 20)),
]
RATIOS = (0.7, 0.5, 0.3)
VARIANTS = {"div32": 32, "div16": 16, "div8": 8, "odd": 1}


def scaled_widths(supernet, r: float, divisor: int) -> dict[str, int]:
    """Every group's width times ``r``, rounded to a multiple of ``divisor`` (and of its conv groups)."""
    out = {}
    for name, g in supernet.groups().items():
        step = math.lcm(divisor, g.conv_groups)
        out[name] = min(g.channels, max(step, int(round(r * g.channels / step)) * step))
    return out


def uniform_arch(supernet, target: float, divisor: int, iters: int = 40):
    """The uniform-width architecture whose exact FLOPs ratio is closest to ``target``."""
    depths = {n: s.num_blocks for n, s in supernet.graph.stages.items()}

    def arch_at(r: float):
        return supernet.make_arch(scaled_widths(supernet, r, divisor), depths, method="uniform",
                                  meta={"width_multiplier": r, "divisor": divisor})

    best, best_r = arch_at(math.sqrt(target)), math.sqrt(target)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        a = arch_at(mid)
        if abs(a.flops_ratio - target) < abs(best.flops_ratio - target):
            best, best_r = a, mid
        if a.flops_ratio < target:
            lo = mid
        else:
            hi = mid
    return best, best_r


def bench_model(name, kwargs, input_size, big_batch, repeats, ratios, variants, threads, workdir: Path, log) -> list[dict]:
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    supernet = create_supernet(model, input_size=input_size, model_name=name, model_kwargs=kwargs)
    entries = [{"variant": "original", "target": 1.0, "arch": None, "net": model, "r": 1.0}]
    for target in ratios:
        for variant in variants:
            divisor = VARIANTS[variant]
            arch, r = uniform_arch(supernet, target, divisor)
            entries.append({"variant": variant, "target": target, "arch": arch, "r": r,
                            "net": materialize(model, arch).eval()})
    atol = 1e-4 if name.startswith("cifar") else 1e-3  # resnet50's 1000 logits: float32 reassociation
    for i, e in enumerate(entries):
        t0 = time.perf_counter()
        info = export_onnx(e["net"], workdir / f"{name}_{i}.onnx", input_size, atol=atol)
        e.update(path=info["path"], exporter=info["exporter"], diff=info["max_abs_diff"], size=info["size_bytes"])
        widths = sorted(set(e["arch"].widths.values())) if e["arch"] else "full"
        log(f"  exported {name} {e['variant']} {e['target']:.0%} ({info['exporter']}, "
            f"|diff| {info['max_abs_diff']:.1e}, {time.perf_counter() - t0:.1f}s) widths {widths}")
    rows = []
    for batch, reps in zip((1, big_batch), repeats):
        t0 = time.perf_counter()
        ms = ort_latency([e["path"] for e in entries], input_size, batch, repeats=reps,
                         warmup=max(2, reps // 10), threads=threads)
        log(f"  timed {name} at batch {batch}: {reps} interleaved repeats of {len(entries)} models "
            f"in {time.perf_counter() - t0:.1f}s")
        for e, t in zip(entries[1:], ms[1:]):
            fr = e["arch"].flops_ratio
            speedup = ms[0] / t
            rows.append({"model": name, "batch": batch, "variant": e["variant"], "target": e["target"],
                         "flops_ratio": fr, "params_ratio": e["arch"].params_ratio, "r": e["r"],
                         "orig_ms": ms[0], "slim_ms": t, "speedup": speedup, "realised": speedup * fr,
                         "exporter": e["exporter"]})
    return rows


def render(rows: list[dict], args, elapsed: float, exporters: set[str]) -> str:
    header = ["model", "batch", "target", "variant", "width mult", "FLOPs ratio", "orig ms", "slim ms",
              "speed-up", "realised"]
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows = sorted(rows, key=lambda r: ([m[0] for m in MODELS].index(r["model"]), r["batch"], -r["target"],
                                       order[r["variant"]]))
    table = format_table([[r["model"], r["batch"], f"{r['target']:.0%}", r["variant"], f"{r['r']:.3f}",
                           f"{r['flops_ratio']:.3f}", f"{r['orig_ms']:.3f}", f"{r['slim_ms']:.3f}",
                           f"{r['speedup']:.2f}x", f"{r['realised']:.3f}"] for r in rows], header)
    cpu = platform.processor() or platform.machine()
    sizes = ", ".join(f"{m[0]} {m[2][1]}px (bs 1 / {m[3]})" for m in MODELS if m[0] in args.models)
    return "\n".join([
        "# ONNX Runtime CPU latency of uniformly thinned ResNets",
        "",
        f"Generated by `python benchmarks/latency.py{' --quick' if args.quick else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min: {os.cpu_count()} CPU cores "
        f"({cpu}), onnxruntime {ort.__version__} CPUExecutionProvider with {args.threads} intra-op threads, "
        f"torch {torch.__version__}, timm {timm.__version__}, {' / '.join(sorted(exporters))} ONNX exporter. "
        f"1-min load average {args.load[0]:.1f} at the start, {args.load[1]:.1f} at the end (a shared machine: "
        "other processes compete for the cores, which interleaving spreads over all models alike).",
        "",
        f"Models: {sizes}; random weights; every channel group scaled by the same width multiplier, "
        "depth untouched. `divN`: widths rounded to multiples of N (8 is the search spaces' default); `odd`: "
        "`round(r * C)`. *FLOPs ratio* is the exact multiply-accumulate ratio; latency is the median over "
        "interleaved repeats (original and all slim variants of a model round-robin); "
        "*speed-up* = orig ms / slim ms; *realised* = speed-up / (1 / FLOPs ratio), 1.00 meaning latency "
        "falls as fast as FLOPs.",
        "",
        table,
        "",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~1 min): cifar_resnet20 only (unless --models), 50%% only, few repeats")
    p.add_argument("--models", nargs="+", default=None, choices=[m[0] for m in MODELS],
                   help="default: all (--quick: cifar_resnet20)")
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="FLOPs ratios to keep (default 0.7 0.5 0.3)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="width roundings to compare (default: all)")
    p.add_argument("--repeat-scale", type=float, default=1.0, help="multiply every model's repeat counts")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks_latency.md"),
                   help="markdown file to write (default docs/benchmarks_latency.md; '-' for none)")
    args = p.parse_args(argv)
    ratios = tuple(args.ratios or ((0.5,) if args.quick else RATIOS))
    if args.models is None:
        args.models = ["cifar_resnet20"] if args.quick else [m[0] for m in MODELS]
    args.load = [os.getloadavg()[0]]
    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tas-latency-") as tmp:
        for name, kwargs, size, big, reps in MODELS:
            if name not in args.models:
                continue
            reps = (max(3, reps[0] // 8), max(3, reps[1] // 4)) if args.quick else reps
            reps = tuple(max(1, int(round(r * args.repeat_scale))) for r in reps)
            log(f"{name} at {size}: ratios {list(ratios)}, repeats {reps}")
            rows += bench_model(name, kwargs, size, big, reps, ratios, args.variants, args.threads, Path(tmp), log)
    elapsed = time.perf_counter() - start
    args.load.append(os.getloadavg()[0])
    text = render(rows, args, elapsed, {r["exporter"] for r in rows})
    if args.output != "-":
        write_report(args.output, text)
        log(f"wrote {args.output} ({elapsed:.0f}s)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
