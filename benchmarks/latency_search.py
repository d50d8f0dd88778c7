"""Latency-aware search: does the slim network hit its latency target, is the table's prediction
right, and what accuracy does a latency budget buy at equal *measured* latency?

Part A -- targets. For ``cifar_resnet20`` (1x28x28) and ``resnet50`` (1x160x160) on Fashion-MNIST
(``/usr/share/datasets/fashion-mnist``): a short teacher run, then ``search.py --latency-ratio r
--runtime ort-cpu`` for r = 0.7 and 0.5 (latency tables cached in ``~/.cache/tas/latency``). The
search's own prediction check (:func:`tas.nas.searcher.search`) exports the slim and the original
network and times them; at the end every slim network of a model is timed again beside its
original in one interleaved ONNX Runtime run. Reported: the measured latency ratio against the
target (goal: within +-10 %), and the predicted vs measured latency, both as absolute ms
(sensitive to the machine's load drifting between table and check) and as ratios to the original
(drift-corrected: both timed in the same run).

Part B -- accuracy at equal measured latency. On ``benchmarks/compare.py``'s Fashion-MNIST setup
(12k images at 16 px, teacher ``cifar_resnet20``, 1 search + 3 distillation epochs, 2 seeds; its
finished cells in ``runs/compare/default`` are reused, missing ones are run), TAS with a latency
budget (``tas-latency``, ORT CPU, batch 32, 1 thread) at 0.7 and 0.5 is added; then every slim
network is timed in one interleaved run. Each method's top-1 (mean over seeds) is interpolated
along its own accuracy-vs-measured-latency curve at the latency the ``tas-latency`` networks
measured.

    python benchmarks/latency_search.py              # both parts (~1 h on 2 cores)
    python benchmarks/latency_search.py --part a     # targets only
    python benchmarks/latency_search.py --quick      # part A on cifar_resnet20 only, fewer images

Writes ``docs/benchmarks_latency_search.md`` (and a PNG of part B). Not a test: nothing asserts.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import compare  # noqa: E402  (benchmarks/compare.py: the Fashion-MNIST accuracy setup)
from benchstats import interp_at  # noqa: E402
import tas  # noqa: E402, F401
from tas.io.checkpoint import atomic_write_bytes, atomic_write_json  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402
from tas.prune.load import load_run

#: part A: model, input size, teacher images, teacher epochs, search images, search batch, latency batch
TARGET_MODELS = {
    # batch 32: at batch 1 this 0.2 ms network's timings swing by +-20 % from run to run here
    "cifar_resnet20": {"size": (1, 28, 28), "limit": 4000, "teacher_epochs": 2, "search_limit": 4000,
                       "batch": 64, "latency_batch": 32, "repeats": 100},
    # Fashion-MNIST upsampled: one input channel
    "resnet50": {"size": (1, 160, 160), "limit": 640, "teacher_epochs": 1, "search_limit": 640,
                 "batch": 16, "latency_batch": 1, "repeats": 40},
}
RATIOS = (0.7, 0.5)
BASELINES = ("uniform", "l1", "synflow", "random")


def log(msg: str) -> None:
    print(msg, flush=True)


# -- part A ---------------------------------------------------------------------------------------
def part_a(args) -> list[dict]:
    from tas.nas import searcher as searching
    from tas.train import loop as training
    from tas.deploy.export import export_onnx
    from tas.deploy.latency import ort_latency

    rows = []
    for name in args.models:
        spec = dict(TARGET_MODELS[name])
        if args.quick:
            spec.update(limit=1000, search_limit=1000, repeats=100)
        root = Path(args.output) / "targets" / name
        teacher = root / "teacher"
        common = {"dataset": "fashion-mnist", "data_dir": args.data_dir, "img_size": spec["size"][1],
                  "device": "cpu", "progress": not args.no_progress, "workers": 0, "seed": 0}
        if not is_finished_run(teacher):
            log(f"{name}: teacher, {spec['teacher_epochs']} epoch(s) on {spec['limit']} images")
            with open(_logfile(root), "a") as logf, contextlib.redirect_stdout(logf):
                training.train({**common, "model": name, "epochs": spec["teacher_epochs"], "limit": spec["limit"],
                                "batch_size": spec["batch"], "lr": 0.1, "output": str(teacher), "overwrite": True})
        model, config = load_run(teacher)
        export_onnx(model, root / "original.onnx", config["input_size"])
        if not args.keep_tables:
            # Measured now, under the load the searches' checks will see (a cached table from a
            # busier or quieter hour shifts every absolute prediction by the same factor).
            from tas.deploy.latency import load_or_build
            from tas.nas.supernet import create_supernet

            log(f"{name}: measuring the latency table (ORT CPU, batch {spec['latency_batch']})")
            net = create_supernet(model, None, input_size=config["input_size"], model_name=name,
                                  model_kwargs=config["model_kwargs"])
            load_or_build(net, runtime="ort-cpu", batch=spec["latency_batch"], threads=torch.get_num_threads(),
                          progress=not args.no_progress, rebuild=True)
        found = []
        for r in args.ratios:
            out = root / f"latency{r}"
            log(f"{name}: searching at latency ratio {r} (ORT CPU, batch {spec['latency_batch']})")
            t0 = time.perf_counter()
            if args.keep_tables and is_finished_run(out):
                log("  (finished search reused)")
            else:
                with open(_logfile(root), "a") as logf, contextlib.redirect_stdout(logf):
                    searching.search({**common, "teacher": str(teacher), "latency_ratio": r, "runtime": "ort-cpu",
                                      "latency_batch": spec["latency_batch"], "epochs": 1,
                                      "limit": spec["search_limit"] // 2, "batch_size": spec["batch"],
                                      "output": str(out), "overwrite": True})
            m = json.loads((out / "metrics.json").read_text())
            slim, sconfig = load_run(out)
            export_onnx(slim, out / "slim.onnx", sconfig["input_size"])
            found.append((r, out, m, time.perf_counter() - t0))
            log(f"  measured ratio {m['measured_latency_ratio']:.3f}, predicted {m['predicted_latency_ratio']:.3f} "
                f"({time.perf_counter() - t0:.0f}s)")
        ms = ort_latency([root / "original.onnx", *(o / "slim.onnx" for _, o, _, _ in found)], spec["size"],
                         spec["latency_batch"], repeats=spec["repeats"], warmup=max(3, spec["repeats"] // 10),
                         threads=args.threads)
        for (r, out, m, secs), slim_ms in zip(found, ms[1:]):
            rows.append({"model": name, "batch": spec["latency_batch"], "target": r,
                         "flops_ratio": m["flops_ratio"], "predicted_ms": m["predicted_latency_ms"],
                         "check_ms": m["measured_latency_ms"], "check_full_ms": m["full_latency_ms"],
                         "predicted_ratio": m["predicted_latency_ratio"], "check_ratio": m["measured_latency_ratio"],
                         "final_ratio": slim_ms / ms[0], "final_full_ms": ms[0], "final_slim_ms": slim_ms,
                         "abs_error": m["prediction_error"], "steady_ratio": m.get("steady_latency_ratio"),
                         # the table's whole-model time: how much the machine's speed moved by the check
                         "table_full_ms": m["predicted_latency_ms"] / m["predicted_latency_ratio"],
                         "drift": m["predicted_latency_ms"] / m["predicted_latency_ratio"] / m["full_latency_ms"] - 1,
                         "steady_error": m.get("steady_prediction_error"),
                         "ratio_error": m["predicted_latency_ratio"] / m["measured_latency_ratio"] - 1,
                         "search_s": round(secs, 1)})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _logfile(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root / "log.txt"


# -- part B ---------------------------------------------------------------------------------------
def part_b(args) -> tuple[list[dict], dict]:
    cargs = compare.parse_args(["--output", args.compare_output, "--doc", "-", "--threads", "1",
                                *(["--no-progress"] if args.no_progress else [])])
    torch.set_num_threads(1)
    compare.ensure_dataset(cargs.data_dir)
    bench = compare.Bench(cargs)
    model = "cifar_resnet20"
    bench.teacher(model)
    methods = ("tas", *BASELINES)
    todo = [(r, s, m) for r in cargs.ratios for s in cargs.seeds for m in methods]
    todo += [(r, s, compare.LATENCY_METHOD) for r in args.ratios for s in cargs.seeds]
    for i, (r, s, m) in enumerate(todo):
        key = f"{model}/r{r}/s{s}/{m}"
        cached = key in bench.results["cells"] and Path(bench.results["cells"][key]["onnx"]).is_file()
        if not cached:
            t0 = time.perf_counter()
            bench.results["cells"][key] = bench.cell(model, r, s, m)
            bench.save()
            log(f"[{i + 1}/{len(todo)}] {key}: top-1 {bench.results['cells'][key]['top1']:.2f}% "
                f"({time.perf_counter() - t0:.0f}s)")
    bench.latency(model)  # every cell and the teacher again, interleaved in one run
    cells = [c for c in bench.results["cells"].values() if c["model"] == model and "latency_ms" in c]
    full = bench.results["teachers"][model]["latency_ms"]
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for m in (*methods, compare.LATENCY_METHOD):
        by_target: dict[float, list[dict]] = {}
        for c in cells:
            if c["method"] == m:
                by_target.setdefault(c["ratio"], []).append(c)
        pts = [(statistics.mean(c["latency_ms"] / full for c in cs), statistics.mean(c["top1"] for c in cs),
                statistics.mean(c["flops_ratio"] for c in cs)) for cs in by_target.values()]
        curves[m] = sorted(pts)
    rows = []
    for lat, top1, fr in curves[compare.LATENCY_METHOD]:
        row = {"latency_ratio": lat, "tas_latency_top1": top1, "tas_latency_flops": fr,
               "tas_flops_top1": interp_at(curves["tas"], lat)}
        base = {b: interp_at(curves[b], lat) for b in BASELINES}
        known = {b: v for b, v in base.items() if v is not None}
        row["best_baseline"] = max(known, key=known.get) if known else None
        row["best_baseline_top1"] = known[row["best_baseline"]] if known else None
        rows.append(row)
    return rows, {"curves": curves, "teacher_top1": bench.results["teachers"][model]["top1"],
                  "teacher_ms": full, "settings": bench.settings}


def plot_b(info: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, pts in info["curves"].items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m,
                    linewidth=2.5 if m.startswith("tas") else 1.2)
    ax.set_xlabel("measured ORT latency / teacher's (batch 32)")
    ax.set_ylabel("distilled top-1 (%)")
    ax.set_title("cifar_resnet20 on Fashion-MNIST (16 px): accuracy vs measured latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- report ---------------------------------------------------------------------------------------
def render(args, a_rows: list[dict], b: tuple[list[dict], dict] | None, png: str | None, elapsed: float) -> str:
    import onnxruntime as ort

    lines = ["# Latency-aware search: targets, prediction, accuracy at equal measured latency", "",
             f"Generated by `python benchmarks/latency_search.py{' --quick' if args.quick else ''}"
             f"{' --part ' + args.part if args.part != 'both' else ''}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC in {elapsed / 60:.1f} min: {os.cpu_count()} CPU cores ({platform.machine()}), onnxruntime "
             f"{ort.__version__} CPUExecutionProvider, torch {torch.__version__}. 1-min load average "
             f"{args.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", ""]
    if a_rows:
        lines += ["## A. Does the slim network hit the latency target?", "",
                  "`search.py --latency-ratio r --runtime ort-cpu` on Fashion-MNIST after a short teacher run "
                  "(1 search epoch; the widths come mostly from the cost loss and the final decode, filled up to the target). *check*: the "
                  "search's own end-of-run measurement, timed like the table's layers (cold: other models ran "
                  "just before each timed call); *final*: all slim networks of the model timed again beside the "
                  f"original in one run ({args.threads} ORT threads), also cold; *steady*: the search's check "
                  "in the steady state (each timed call right after an untimed one of the same model). *abs. "
                  "error* = predicted ms / check ms − 1; *original drift* = the table's time of the whole "
                  "original / the check's − 1, how much the machine's speed moved between the two (abs. error "
                  "≈ drift and ratio error combined); *ratio error* = predicted ratio / check ratio − 1 (both "
                  "timed in the same run, so free of drift); *steady error* = predicted ms × the table's "
                  "steady-state factor / steady ms − 1.", "",
                  format_table([[r["model"], r["batch"], f"{r['target']:.2f}", f"{r['flops_ratio']:.3f}",
                                 f"{r['predicted_ratio']:.3f}", f"{r['check_ratio']:.3f}", f"{r['final_ratio']:.3f}",
                                 "yes" if abs(r["final_ratio"] / r["target"] - 1) <= 0.10 else "NO",
                                 f"{r['predicted_ms']:.2f} / {r['check_ms']:.2f}", f"{r['abs_error']:+.1%}",
                                 f"{r['table_full_ms']:.2f} / {r['check_full_ms']:.2f} / {r['final_full_ms']:.2f}",
                                 f"{r['drift']:+.1%}", f"{r['ratio_error']:+.1%}", _fmt(r.get("steady_ratio"), ".3f"),
                                 _fmt(r.get("steady_error"), "+.1%")] for r in a_rows],
                               ["model", "batch", "target", "FLOPs ratio", "predicted ratio", "check ratio",
                                "final ratio", "within ±10 %", "predicted / check ms", "abs. error",
                                "original ms: table / check / final", "original drift", "ratio error", "steady ratio", "steady error"]), "",
                  "Cold is what the table and the budget model: a layer's weights are not in cache, as inside "
                  "a network bigger than the cache. Served back to back, a network whose weights fit in the "
                  "cache (cifar_resnet20: 1 MB; resnet18 at 11 MB fits this machine's 32 MB L3) runs "
                  "relatively faster the smaller it is, so its steady-state ratio falls below the target — the "
                  "slim network is then faster than asked. Tables timed warm do not fix this: on resnet18 at "
                  "64 px they over-predict small architectures by 46–630 %, since the layers' warm sum leaves "
                  "most of the whole network's time as a fixed overhead.", ""]
    if b is not None:
        rows, info = b
        s = info["settings"]
        lines += ["## B. Accuracy at equal measured latency (Fashion-MNIST)", "",
                  f"`benchmarks/compare.py`'s setup: cifar_resnet20, {s['limit']} images at {s['img_size']} px, "
                  f"teacher {info['teacher_top1']:.2f} % ({info['teacher_ms']:.2f} ms at batch 32), budget "
                  f"{s['budget']} epochs after the teacher (TAS: {s['search_epochs']} search + "
                  f"{s['budget'] - s['search_epochs']} distillation), 2 seeds. `tas-latency` searches against the "
                  "ORT latency table (batch 32, 1 thread); `tas` against FLOPs; the baselines prune to FLOPs "
                  "targets. All slim networks were timed together; each method's mean top-1 is interpolated "
                  "along its own curve (points at 70/50/30 % FLOPs) at the latency `tas-latency` measured "
                  "('–': outside that method's measured range).", "",
                  format_table([[f"{r['latency_ratio']:.3f}", f"{r['tas_latency_flops']:.3f}",
                                 f"{r['tas_latency_top1']:.2f}",
                                 "–" if r["tas_flops_top1"] is None else f"{r['tas_flops_top1']:.2f}",
                                 "–" if r["best_baseline"] is None else
                                 f"{r['best_baseline_top1']:.2f} ({r['best_baseline']})"] for r in rows],
                               ["measured latency ratio", "tas-latency FLOPs ratio", "tas-latency top-1",
                                "tas (FLOPs) top-1 at that latency", "best baseline top-1 at that latency"]), "",
                  "Per method, (measured latency ratio, mean top-1, FLOPs ratio) of each target:", ""]
        lines += [f"- `{m}`: " + ", ".join(f"({x:.3f}, {y:.2f}, {f:.3f})" for x, y, f in pts)
                  for m, pts in info["curves"].items()]
        lines += [""] + ([f"![accuracy vs measured latency]({png})", ""] if png else [])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("a", "b", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="part A only, cifar_resnet20, fewer images")
    p.add_argument("--models", nargs="+", default=None, choices=list(TARGET_MODELS), help="part A models")
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="latency ratios kept")
    p.add_argument("--threads", type=int, default=2, help="part A: torch and ORT threads (part B uses 1)")
    p.add_argument("--keep-tables", action="store_true",
                   help="part A: use cached latency tables instead of measuring them again first")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=str(REPO / "runs" / "latency_search"))
    p.add_argument("--compare-output", default=str(REPO / "runs" / "compare" / "default"),
                   help="part B: compare.py's run directory (finished cells are reused)")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks_latency_search.md"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.part = "a"
    args.models = args.models or (["cifar_resnet20"] if args.quick else list(TARGET_MODELS))
    args.load = [os.getloadavg()[0]]
    start = time.perf_counter()
    compare.ensure_dataset(args.data_dir)
    a_rows, b = [], None
    if args.part in ("a", "both"):
        torch.set_num_threads(args.threads)
        a_rows = part_a(args)
        atomic_write_json(Path(args.output) / "targets.json", a_rows)
    if args.part in ("b", "both"):
        b = part_b(args)
    png = None
    if b is not None and args.doc != "-":
        path = Path(args.doc).with_suffix(".png")
        why = plot_b(b[1], path)
        png = None if why else path.name
    text = render(args, a_rows, b, png, time.perf_counter() - start)
    if args.doc != "-":
        atomic_write_bytes(args.doc, text.encode())
        log(f"wrote {args.doc}")
    log(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
