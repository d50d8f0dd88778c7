"""``tas export`` / ``python -m tas.export``: export a run's network to ONNX and time it against its teacher.

A thin layer over :func:`tas.deploy.run.export_run` (see there for how the teacher is found).
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from ..cli import parse_args
from ..deploy.export import MIN_OPSET
from ..deploy.run import export_run, summary_table
from ..io.checkpoint import atomic_write_json

__all__ = ["build_parser", "main"]

#: the first line of ``--help``
DESCRIPTION = ("Export: a (slim) network → a self-contained ONNX file, checked against torch, and timed with "
               "ONNX Runtime.")


def build_parser(prog: str | None = "python -m tas.export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
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
