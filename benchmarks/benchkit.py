"""The machinery the benchmark scripts share: logging, the Fashion-MNIST files, and writing a report.

Cached, resumable cells (teacher, then prune + distil per model/ratio/seed/method) are
:class:`compare.Bench` (``run_cells``), which benchmarks/allocation.py subclasses; statistics are
benchmarks/benchstats.py. Each script answers one question and keeps only its own logic.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tas.data import FASHION_MNIST_DIR
from tas.io.checkpoint import STATE_DIR, atomic_write_bytes, atomic_write_json

__all__ = ["log", "ensure_dataset", "check_jobs_and_device", "prepare_run", "start_or_resume", "write_report"]


def log(msg: str) -> None:
    """One progress line on stdout, flushed (benchmarks run for hours, often under ``tee``)."""
    print(msg, flush=True)


def ensure_dataset(data_dir: str | None) -> None:
    """Install Debian's dataset-fashion-mnist when the IDX files are missing and apt-get can."""
    path = Path(data_dir or FASHION_MNIST_DIR)
    if path.is_dir() and any(path.glob("train-images-idx3-ubyte*")):
        return
    if data_dir is None and shutil.which("apt-get") and os.geteuid() == 0:
        log(f"{path} missing: apt-get install dataset-fashion-mnist")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False)
        if any(path.glob("train-images-idx3-ubyte*")):
            return
    sys.exit(f"error: Fashion-MNIST not found in {path}; `apt-get install dataset-fashion-mnist` or pass --data-dir")


def check_jobs_and_device(parser, args) -> None:
    """``--jobs`` and ``--device`` refused at parse time (one line, exit 2), not in a worker later."""
    from tas.distributed import resolve_device
    from tas.errors import TasError

    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        resolve_device(args.device)
    except (TasError, RuntimeError) as e:
        parser.error(str(e))


def prepare_run(args) -> None:
    """Before a Fashion-MNIST benchmark's first cell: record the 1-min load average (``args.load``,
    the report prints it), run on ``args.threads`` threads and make sure the dataset is there."""
    args.load = [os.getloadavg()[0]]
    torch.set_num_threads(max(1, args.threads))
    ensure_dataset(args.data_dir)


#: the train settings that make two teacher runs the same run (the rest, e.g. the device, may change)
RUN_IDENTITY = ("model", "dataset", "epochs", "lr", "batch_size", "img_size", "limit", "seed")


def start_or_resume(run: str | os.PathLike, cfg: dict, **extra) -> dict:
    """``cfg`` (a bench's train settings for a long run, a teacher) with how it starts: resumed where
    a stopped run of the same settings (:data:`RUN_IDENTITY` of ``cfg``, and ``extra``, e.g. a bench's
    data split) left a complete state (a lease, a job limit or Ctrl-C cut it short); otherwise from
    scratch over ``run``, with the settings recorded for next time. The train command's own check
    covers only some settings (not the epochs or the learning rate), and a run brought back from
    another machine may lack its state's tensors."""
    run = Path(run)
    mark, settings = run / "bench_settings.json", {**{k: cfg.get(k) for k in RUN_IDENTITY}, **extra}
    try:
        tensors = json.loads((run / STATE_DIR / "state.json").read_text())["tensors"]
        if json.loads(mark.read_text()) == settings and (run / STATE_DIR / tensors).is_file():
            return {**cfg, "output": str(run), "resume": True}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(mark, settings)
    return {**cfg, "output": str(run), "overwrite": True}


def write_report(path: str | os.PathLike, text: str) -> None:
    """Write a report (markdown) atomically: a killed run never leaves half a document."""
    atomic_write_bytes(path, text.encode())
