"""The whole pipeline in one call: teacher → search → distil → ONNX, ending in one summary table.

``python -m tas.pipeline --output runs/demo`` (what ``make demo`` runs) trains cifar_resnet20 on the
bundled digits set, searches an architecture at 50% of its FLOPs, distils it from the teacher and
exports it to ONNX with an ONNX Runtime speed check. Each stage is the same library call the
scripts make, writing its own run directory under ``--output``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

from .cli import epoch_count, format_table, parse_args, run_main  # noqa: E402
from .io.checkpoint import atomic_write_json
from .io.rundir import run_lock
from .nas import run as searching
from .train import run as train_run
from .deploy.run import export_run

__all__ = ["run_pipeline", "main"]


def run_pipeline(output: str | Path = "runs/demo", model: str = "cifar_resnet20", dataset: str = "digits",
                 data_dir: str | None = None, flops_ratio: float = 0.5, teacher_epochs: float = 3,
                 search_epochs: float = 2, distill_epochs: float = 3, selection: str = "prefix", seed: int = 0,
                 limit: int | None = None, img_size: int | None = None, progress: bool = True,
                 latency_repeats: int = 30) -> dict[str, Any]:
    """Run every stage into ``output/{teacher,search,slim}`` + ``output/slim.onnx``; returns the summary."""
    with run_lock(output):  # the stages lock their own directories; this keeps two pipelines apart
        return _run_pipeline(Path(output), model, dataset, data_dir, flops_ratio, teacher_epochs, search_epochs,
                             distill_epochs, selection, seed, limit, img_size, progress, latency_repeats)


def _run_pipeline(out: Path, model: str, dataset: str, data_dir: str | None, flops_ratio: float,
                  teacher_epochs: float, search_epochs: float, distill_epochs: float, selection: str, seed: int,
                  limit: int | None, img_size: int | None, progress: bool, latency_repeats: int) -> dict[str, Any]:
    common = {"dataset": dataset, "data_dir": data_dir, "seed": seed, "limit": limit, "progress": progress,
              "overwrite": True, "device": "auto"}
    t0 = time.perf_counter()
    print("== 1/4 teacher ==", flush=True)
    teacher = train_run.train({**common, "model": model, "epochs": teacher_epochs, "img_size": img_size,
                              "output": str(out / "teacher")})
    print("== 2/4 search ==", flush=True)
    search = searching.search({**common, "teacher": str(out / "teacher"), "flops_ratio": flops_ratio,
                               "epochs": search_epochs, "selection": selection, "output": str(out / "search")})
    print("== 3/4 distil ==", flush=True)
    slim = train_run.train({**common, "arch": str(out / "search" / "arch.json"), "teacher": str(out / "teacher"),
                           "epochs": distill_epochs, "output": str(out / "slim")}, mode="distill")
    print("== 4/4 export ==", flush=True)
    onnx_path = out / "slim.onnx"
    exported = export_run(out / "slim", onnx_path, teacher=out / "teacher", batch_sizes=(1, 32),
                          repeats=latency_repeats)
    wall = time.perf_counter() - t0
    arch = search["arch"]
    summary = {
        "teacher_top1": teacher["top1"], "slim_top1": slim["top1"], "top1_drop": teacher["top1"] - slim["top1"],
        "flops_ratio": arch.flops_ratio, "params_ratio": arch.params_ratio, "target_flops_ratio": flops_ratio,
        "pre_decode_ratio": search["pre_decode_ratio"], "decode_moves": search["decode_moves"],
        "landing_steps": search["landing_steps"], "ort_speedup": exported.get("speedup"), "wall_time_s": round(wall, 1),
        "paths": {"teacher": str(out / "teacher"), "search": str(out / "search"), "arch": str(out / "search" / "arch.json"),
                  "slim": str(out / "slim"), "onnx": str(onnx_path)},
    }
    speed = summary["ort_speedup"] or {}
    rows = [
        ["teacher top-1", f"{teacher['top1']:.2f}%"],
        ["slim top-1 (distilled)", f"{slim['top1']:.2f}% ({slim['top1'] - teacher['top1']:+.2f})"],
        ["FLOPs kept", f"{arch.flops:,} / {arch.full_flops:,} = {arch.flops_ratio:.3f} (target {flops_ratio})"],
        ["params kept", f"{arch.params:,} / {arch.full_params:,} = {arch.params_ratio:.3f}"],
        ["search's own argmax", f"{search['pre_decode_ratio']:.3f} of the FLOPs; decode moves: {search['decode_moves']}"
                                f"; landing steps: {search['landing_steps']}"],
        *[[f"ORT CPU speed-up @ batch {b}", f"{v:.2f}x"] for b, v in speed.items()],
        ["teacher run", summary["paths"]["teacher"]],
        ["architecture", summary["paths"]["arch"]],
        ["slim run", summary["paths"]["slim"]],
        ["ONNX", summary["paths"]["onnx"]],
        ["wall time", f"{wall:.0f} s"],
        ["inspect the search", f"tensorboard --logdir {out / 'search'}"],
    ]
    print(format_table(rows, header=["tas pipeline", f"{model} on {dataset}"]))
    atomic_write_json(out / "summary.json", summary)
    return summary


def build_parser(prog: str | None = "python -m tas.pipeline") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--flops-ratio", type=float, default=0.5)
    p.add_argument("--teacher-epochs", type=epoch_count, default=3)
    p.add_argument("--search-epochs", type=epoch_count, default=2)
    p.add_argument("--distill-epochs", type=epoch_count, default=3)
    p.add_argument("--selection", default="prefix", choices=("prefix", "sapp"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per split (smoke runs)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = "python -m tas.pipeline") -> int:
    a = parse_args(build_parser(prog), argv)
    run_pipeline(a.output, a.model, a.dataset, a.data_dir, a.flops_ratio, a.teacher_epochs, a.search_epochs,
                 a.distill_epochs, a.selection, a.seed, a.limit, a.img_size, not a.no_progress, a.latency_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
