"""Accuracy vs FLOPs: TAS against baseline pruners from the literature, at equal FLOPs and equal epochs.

On Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, Debian ``dataset-fashion-mnist``) this

1. trains ``cifar_resnet20`` (and ``cifar_resnet56`` with ``--full``) once as the teacher (cached:
   a finished run directory with the same settings is reused);
2. for every FLOPs ratio kept (70 %, 50 %, 30 %), seed and method picks an architecture —
   ``tas`` (:func:`tas.nas.run.search`), ``uniform``, ``l1``, ``synflow``, ``random``, ``plasticity``
   (:func:`tas.baselines.run_baseline`) — and distils it from the teacher
   (:func:`tas.train.run.train` in ``distill`` mode, weights inherited from the teacher);
3. gives every method the same post-teacher budget of ``B`` epochs over the same training subset:
   TAS searches ``s`` epochs (one search epoch = one pass over the subset: half for the weight
   steps, half for the architecture steps) and distils ``B − s``; ``plasticity`` fine-tunes the
   teacher ``s`` epochs while it prunes (one pass over the subset each) and distils ``B − s``; the
   other baselines distil ``B``;
4. exports each slim network to ONNX (:func:`tas.deploy.export.export_onnx`) and times them all at batch
   32, interleaved with the teacher (:func:`tas.deploy.latency.ort_latency`);
5. writes ``docs/benchmarks_compare.md`` (top-1 mean ± sample std over seeds, FLOPs and params
   kept, ORT latency, wall time, accuracy under corruptions, recall distortion), a PNG plot of top-1 vs FLOPs kept per method
   (matplotlib; installed with pip on first use unless ``--no-install``), and prints the
   recall-distortion summary (:func:`tas.metrics.recall_distortion`) of every slim network;
6. measures every slim network and the teacher under Gaussian noise, blur, contrast loss and rotation
   at three severities (:func:`tas.metrics.robustness`, on the first ``--robust-limit`` test images)
   and says per method whether pruning helped or hurt robustness relative to the teacher.

    python benchmarks/compare.py --quick   # ~10 min: 50 % only, 2 seeds, 4000 training images
    python benchmarks/compare.py           # < 2 h: 70/50/30 %, 2 seeds, 12000 training images
    python benchmarks/compare.py --full    # also cifar_resnet56 (several hours)

Resumable: every finished cell is recorded in ``<output>/results.json`` (and its run directories
are kept), so a rerun skips it; ``--fresh`` starts over. Not a test: nothing here asserts.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402
from tas.baselines import TRAINING  # noqa: E402  (methods whose training counts against the budget)
from tas.io.checkpoint import atomic_write_json  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.io.rundir import is_finished_run  # noqa: E402
from tas.prune.load import load_run  # noqa: E402
from benchkit import check_jobs_and_device, log, prepare_run, start_or_resume, write_report  # noqa: E402

METHODS = ("tas", "uniform", "l1", "synflow", "random", "plasticity", "undecayed")
#: TAS with a measured-latency budget (``ratio`` is then the latency fraction kept, ORT CPU at batch
#: 32); benchmarks/latency_search.py adds these cells
LATENCY_METHOD = "tas-latency"
DATASET = "fashion-mnist"

#: settings per mode; flags override them
MODES = {
    "quick": {"models": ["cifar_resnet20"], "ratios": [0.5], "seeds": [0, 1], "limit": 4000, "img_size": 16,
              "teacher_epochs": 4, "budget": 3, "search_epochs": 1, "latency_repeats": 30},
    "default": {"models": ["cifar_resnet20"], "ratios": [0.7, 0.5, 0.3], "seeds": [0, 1], "limit": 12000,
                "img_size": 16, "teacher_epochs": 8, "budget": 4, "search_epochs": 1, "latency_repeats": 50},
    "full": {"models": ["cifar_resnet20", "cifar_resnet56"], "ratios": [0.7, 0.5, 0.3], "seeds": [0, 1],
             "limit": 12000, "img_size": 16, "teacher_epochs": 8, "budget": 4, "search_epochs": 1,
             "latency_repeats": 50},
}
#: the settings a resumed run must share with the results it continues
KEYS = ("limit", "img_size", "teacher_epochs", "budget", "search_epochs", "batch_size", "lr")


class Bench:
    """Cached, resumable cells (teacher, then per model/ratio/seed/method: prune + distil) in ``args.output``.

    Subclasses (benchmarks/allocation.py) change the dataset, the settings a resume must share
    (``keys``), the teacher's training (:meth:`train_teacher`) and the test set (``test_limit``).
    """

    #: the settings a resumed run must share with the results it continues
    keys = KEYS
    #: the dataset every run trains on (``tas.data`` name)
    dataset = DATASET

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(args.output)
        self.results_path = self.root / "results.json"
        self.test_limit = args.limit  # the test images: as many as the training subset (None: all)
        self.settings = {k: getattr(args, k) for k in self.keys}
        self.results = {"settings": self.settings, "teachers": {}, "cells": {}}
        if self.results_path.is_file() and not args.fresh:
            old = json.loads(self.results_path.read_text())
            if old.get("settings") != self.settings:
                sys.exit(f"error: {self.results_path} was made with other settings ({old.get('settings')}); "
                         "pass --fresh or another --output")
            self.results = old
        elif args.fresh and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.loaders = None

    def save(self) -> None:
        atomic_write_json(self.results_path, self.results)

    def is_current(self, key: str) -> bool:
        """Whether the cached cell ``key`` can be reused: recorded, and its ONNX file still there.
        Subclasses tighten it (benchmarks/allocation.py drops cells older than a report they need)."""
        c = self.results["cells"].get(key)
        return c is not None and Path(c["onnx"]).is_file()

    @staticmethod
    def key(model: str, ratio: float, seed: int, method: str) -> str:
        """A cell's key in ``results["cells"]``."""
        return f"{model}/r{ratio}/s{seed}/{method}"

    def depends_on(self, model: str, ratio: float, seed: int, method: str) -> str | None:
        """The key of the cell this one builds on and must follow (none here)."""
        return None

    @classmethod
    def setup_worker(cls, args: argparse.Namespace) -> None:
        """What a worker process (``--jobs``) needs before it builds its bench: threads, the data."""
        prepare_run(args)

    def pretrain(self, models: list[str], pool) -> None:
        """Train what :meth:`teacher` would train, in ``pool`` (``--jobs``); nothing here: the
        teachers train in the parent."""

    def run_cells(self, models: list[str], cells: list[tuple[str, float, int, str]], start: float,
                  describe: Callable[[dict], str], skip: tuple[type[BaseException], ...] = (),
                  after_model: Callable[[str], None] | None = None, compute: bool = True, jobs: int = 1) -> None:
        """Every cell ``(model, ratio, seed, method)`` not cached yet (:meth:`is_current`), in the order
        given, model by model (its teacher first, the ONNX latencies of all its cells last), saving
        ``results.json`` after each cell so a killed run resumes there. ``describe(result)`` is the
        cell's log line; a cell raising one of ``skip`` is recorded under ``results["skipped"]`` (and
        not retried) instead of failing the run; ``after_model(model)`` runs once a model's cells and
        latencies are done. ``compute=False`` runs no new cell (a missing teacher is still trained):
        only the cached ones are measured.
        ``jobs > 1``: the teachers first (:meth:`pretrain`), then every model's new cells at once in
        that many worker processes (benchmarks/cellpool.py); the latencies after all of them."""
        if jobs > 1:
            self.run_pooled(models, cells if compute else [], start, describe, skip, jobs)
        for model in models:
            self.teacher(model)
            todo = [c for c in cells if c[0] == model]
            for i, (m, r, s, meth) in enumerate(todo):
                key = self.key(m, r, s, meth)
                if self.is_current(key):
                    log(f"[{i + 1}/{len(todo)}] {key}: cached (top-1 {self.results['cells'][key]['top1']:.2f}%)")
                    continue
                if key in self.results.get("skipped", {}) or not compute:
                    continue
                t0 = time.perf_counter()
                try:
                    outcome = ("done", self.cell(m, r, s, meth))
                except skip as e:  # e.g. a latency target below the space's smallest network
                    outcome = ("skipped", str(e))
                self.record(key, outcome, f"{i + 1}/{len(todo)}", describe, time.perf_counter() - t0, start)
            self.latency(model)
            if after_model is not None:
                after_model(model)

    def record(self, key: str, outcome: tuple[str, Any], progress: str, describe: Callable[[dict], str],
               seconds: float, start: float, where: str = "") -> bool:
        """Record a cell's ``("done", result)`` or ``("skipped", reason)`` in ``results.json`` (a skip
        is not retried) and log it; whether it was a skip."""
        status, payload = outcome
        if status == "skipped":
            self.results["skipped"][key] = payload
            self.save()
            log(f"[{progress}] {key}: skipped ({payload})")
            return True
        self.results["cells"][key] = payload
        self.save()
        log(f"[{progress}] {key}: {describe(payload)} ({seconds:.0f}s{where}; "
            f"{(time.perf_counter() - start) / 60:.1f} min so far)")
        return False

    def run_pooled(self, models: list[str], cells: list[tuple[str, float, int, str]], start: float,
                   describe: Callable[[dict], str], skip: tuple[type[BaseException], ...], jobs: int) -> None:
        """:meth:`run_cells`'s ``jobs > 1`` part: teachers, then the cells not cached, in worker processes
        (with no cells, as ``compute=False`` gives: the teachers alone)."""
        import cellpool

        with cellpool.open_pool(self, jobs) as pool:
            self.pretrain(models, pool)
        for model in models:
            self.teacher(model)  # recorded (and its test predictions saved) before any worker reads them
        todo = [c for c in cells if c[0] in models and not self.is_current(self.key(*c))
                and self.key(*c) not in self.results.get("skipped", {})]
        if not todo:
            return
        log(f"{len(todo)} cells in {jobs} worker processes")
        pool = cellpool.open_pool(self, jobs)
        try:
            cellpool.run_in_pool(self, pool, todo, start, describe, skip)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def common(self, seed: int) -> dict:
        a = self.args
        return {"dataset": self.dataset, "data_dir": a.data_dir, "img_size": a.img_size, "seed": seed,
                "device": getattr(a, "device", "cpu"), "progress": not a.no_progress, "log_every": 50, "workers": 0}

    def test_loader(self):
        if self.loaders is None:
            from tas.data import create_loaders

            self.loaders = create_loaders(DATASET, data_dir=self.args.data_dir, batch_size=256,
                                          img_size=self.args.img_size, limit=self.test_limit)
        return self.loaders["test"]

    @property
    def device(self) -> torch.device:
        """Where cells train and are evaluated (``--device``; the CPU by default)."""
        from tas.distributed import resolve_device

        return resolve_device(getattr(self.args, "device", "cpu"))

    @torch.no_grad()
    def predict(self, model) -> tuple[np.ndarray, np.ndarray]:
        model.eval().to(self.device)
        preds, labels = [], []
        for x, y in self.test_loader():
            preds.append(model(x.to(self.device)).argmax(1).cpu())
            labels.append(y)
        return torch.cat(preds).numpy(), torch.cat(labels).numpy()

    def robust(self, model) -> dict:
        """Top-1 under corruptions (:func:`tas.metrics.robustness`) on the first ``--robust-limit`` test images."""
        from tas.metrics import robustness

        r = robustness(model.to(self.device), self.test_loader().dataset,
                       limit=getattr(self.args, "robust_limit", 1000), seed=0)
        return {"clean": r["clean"], "mean_corrupted": r["mean_corrupted"], "relative": r["relative"],
                "accuracy": {n: {str(v): a for v, a in acc.items()} for n, acc in r["accuracy"].items()},
                "num_samples": r["num_samples"]}

    def add_robustness(self, model_name: str) -> None:
        """Fill in the robustness of the teacher and of cached cells measured before it existed."""
        todo = [c for c in self.results["cells"].values() if c["model"] == model_name and "robust" not in c]
        info = self.results["teachers"][model_name]
        if "robust" not in info:
            info["robust"] = self.robust(load_run(self.teacher_dir(model_name))[0])
            self.save()
        for c in todo:
            slim_dir = self.root / model_name / f"r{c['ratio']}" / f"s{c['seed']}" / c["method"] / "slim"
            if is_finished_run(slim_dir):
                c["robust"] = self.robust(load_run(slim_dir)[0])
                self.save()

    # -- teacher -------------------------------------------------------------------------------
    def teacher_dir(self, model_name: str) -> Path:
        """The teacher's run directory (every cell of ``model_name`` distils from it)."""
        run = self.results["teachers"].get(model_name, {}).get("run")
        return Path(run) if run else self.root / model_name / "teacher"

    def train_teacher(self, model_name: str, out: Path) -> dict:
        """Train the teacher into ``out``: ``args.teacher_epochs`` epochs of SGD, cosine; its metrics."""
        from tas.train import run as train_run

        a = self.args
        log(f"teacher {model_name}: training {a.teacher_epochs} epochs on {a.limit} images at {a.img_size}px")
        out.mkdir(parents=True, exist_ok=True)
        cfg = start_or_resume(out, {**self.common(0), "model": model_name, "epochs": a.teacher_epochs,
                                    "limit": a.limit, "batch_size": a.batch_size, "lr": 0.1})
        with open(out / "log.txt", "a") as logf, contextlib.redirect_stdout(sys.stdout if a.verbose else logf):
            return train_run.train(cfg)

    def teacher(self, model_name: str) -> dict:
        info = self.results["teachers"].get(model_name)
        if info is None or not is_finished_run(self.teacher_dir(model_name)):
            t0 = time.perf_counter()
            m = self.train_teacher(model_name, self.root / model_name / "teacher")
            info = {"top1": m["top1"], "flops": m["flops"], "params": m["params"],
                    "wall_s": round(time.perf_counter() - t0, 1), **m.get("teacher_info", {})}
            self.results["teachers"][model_name] = info
            self.save()
        out = self.teacher_dir(model_name)
        log(f"teacher {model_name}: top-1 {info['top1']:.2f}%, {info['flops'] / 1e6:.2f} MMACs ({out})")
        preds_path = out / "test_preds.npy"
        if not preds_path.is_file():
            model, _ = load_run(out)
            preds, labels = self.predict(model)
            np.save(preds_path, preds)
            np.save(out / "test_labels.npy", labels)
        onnx = out / "model.onnx"
        if not onnx.is_file():
            from tas.deploy.export import export_onnx

            model, config = load_run(out)
            export_onnx(model, onnx, config["input_size"])
        return info

    # -- one cell ------------------------------------------------------------------------------
    def search_epochs(self, method: str) -> int:
        """Of the post-teacher budget, the epochs ``method`` spends choosing its architecture."""
        return self.args.search_epochs if method.startswith("tas") or method in TRAINING else 0

    def search_overrides(self, method: str) -> dict:
        """Search settings a TAS variant ``method`` changes (none here)."""
        return {}

    def distill_overrides(self, method: str) -> dict:
        """Distillation settings ``method`` changes (none here)."""
        return {}

    def cell(self, model_name: str, ratio: float, seed: int, method: str) -> dict:
        from tas.nas import run as searching
        from tas.train import run as train_run
        from tas.baselines import run_baseline
        from tas.deploy.export import export_onnx
        from tas.metrics import recall_distortion

        a = self.args
        cdir = self.root / model_name / f"r{ratio}" / f"s{seed}" / method
        teacher = self.teacher_dir(model_name)
        timing_path = cdir / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        search_dir, slim_dir = cdir / "search", cdir / "slim"
        search_epochs = self.search_epochs(method)
        distill_epochs = a.budget - search_epochs
        cdir.mkdir(parents=True, exist_ok=True)
        with open(cdir / "log.txt", "a") as logf, contextlib.redirect_stdout(logf if not a.verbose else sys.stdout):
            if "prune_s" not in timing or not (search_dir / "arch.json").is_file():
                t0 = time.perf_counter()
                common = {**self.common(seed), "teacher": str(teacher), "flops_ratio": ratio,
                          "output": str(search_dir), "overwrite": True, "batch_size": a.batch_size}
                if method == LATENCY_METHOD:
                    common.pop("flops_ratio")
                    common.update(latency_ratio=ratio, runtime="ort-cpu", latency_batch=32)
                if method.startswith("tas"):
                    # one search epoch = one pass over the subset (half weights, half architecture)
                    searching.search({**common, "epochs": search_epochs, **self.search_overrides(method),
                                      "limit": None if a.limit is None else a.limit // 2})
                else:
                    # a plasticity epoch = one pass over the whole subset while it prunes
                    run_baseline({**common, "method": method, "limit": a.limit,
                                  **({"epochs": search_epochs} if search_epochs else {})})
                timing = {"prune_s": round(time.perf_counter() - t0, 1)}
                atomic_write_json(timing_path, timing)
            if "distill_s" not in timing or not is_finished_run(slim_dir):
                t0 = time.perf_counter()
                train_run.train({**self.common(seed), "arch": str(search_dir / "arch.json"), "teacher": str(teacher),
                                "epochs": distill_epochs, "limit": a.limit, "batch_size": a.batch_size, "lr": a.lr,
                                "output": str(slim_dir), "overwrite": True, **self.distill_overrides(method)},
                                mode="distill")
                timing["distill_s"] = round(time.perf_counter() - t0, 1)
                atomic_write_json(timing_path, timing)
        arch = tas.Arch.from_json(search_dir / "arch.json")
        metrics = json.loads((slim_dir / "metrics.json").read_text())
        slim, config = load_run(slim_dir)
        preds, labels = self.predict(slim)
        tpreds = np.load(teacher / "test_preds.npy")
        rd = recall_distortion(tpreds, preds, labels)
        robust = self.robust(slim)
        onnx = cdir / "slim.onnx"
        export_onnx(slim.cpu(), onnx, config["input_size"])
        return {"model": model_name, "ratio": ratio, "seed": seed, "method": method, "top1": metrics["top1"],
                "flops": arch.flops, "params": arch.params, "flops_ratio": arch.flops_ratio,
                "params_ratio": arch.params_ratio, "search_epochs": search_epochs, "distill_epochs": distill_epochs,
                "prune_s": timing["prune_s"], "distill_s": timing["distill_s"],
                "wall_s": round(timing["prune_s"] + timing["distill_s"], 1), "onnx": str(onnx),
                "widths": arch.widths, "depths": arch.depths,
                "test_top1": round(100 * float((preds == labels).mean()), 4), "robust": robust,
                "search_metrics": {k: v for k, v in json.loads((search_dir / "metrics.json").read_text()).items()
                                   if v is None or isinstance(v, (bool, int, float, str))
                                   or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))},
                "recall": {k: rd[k] for k in ("teacher_accuracy", "slim_accuracy", "mean_change_below",
                                              "mean_change_above", "intensification", "intensified", "below")}}

    # -- latency -------------------------------------------------------------------------------
    def latency(self, model_name: str) -> None:
        from tas.deploy.latency import ort_latency

        a = self.args
        cells = [c for c in self.results["cells"].values() if c["model"] == model_name and Path(c["onnx"]).is_file()]
        if not a.retime and "latency_ms" in self.results["teachers"][model_name] and all("latency_ms" in c for c in cells):
            log(f"latency of {model_name}: cached (--retime to measure again)")
            return
        teacher = self.teacher_dir(model_name) / "model.onnx"
        size = (1, a.img_size, a.img_size)
        t0 = time.perf_counter()
        ms = ort_latency([teacher] + [c["onnx"] for c in cells], size, 32, repeats=a.latency_repeats,
                         warmup=max(2, a.latency_repeats // 5), threads=a.threads)
        # every model is timed again with the others: latencies are only comparable within one interleaved run
        self.results["teachers"][model_name]["latency_ms"] = ms[0]
        for c, t in zip(cells, ms[1:]):
            c["latency_ms"] = t
        self.save()
        log(f"timed {len(cells) + 1} ONNX models of {model_name} at batch 32, {a.latency_repeats} interleaved "
            f"repeats, {a.threads} thread(s): {time.perf_counter() - t0:.0f}s")


# the report lives in compare_report; its names stay reachable as compare.<name> (sibling benchmarks)
from compare_report import (HEADER, RD_HEADER, ROBUST_HEADER, plot, render, results_model,  # noqa: E402, F401
                            summarize, summarize_robustness, verdict)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags below, with the mode's settings filled in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="~10 min: 50%% only, 2 seeds, 4000 images")
    g.add_argument("--full", action="store_true", help="also cifar_resnet56")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=(*METHODS, LATENCY_METHOD))
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="FLOPs fractions kept")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--limit", type=int, default=None, help="training (and test) images")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--budget", type=int, default=None, help="post-teacher epochs per method")
    p.add_argument("--search-epochs", type=int, default=None, help="of the budget, TAS's search epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="distillation learning rate")
    p.add_argument("--latency-repeats", type=int, default=None)
    p.add_argument("--robust-limit", type=int, default=1000,
                   help="test images the corruption robustness is measured on (the first ones)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1: shared machine)")
    p.add_argument("--jobs", type=int, default=1, help="cells at once, each in a worker process (benchmarks/cellpool.py)")
    p.add_argument("--device", default="cpu", help="training, search and evaluation device (cpu, cuda, auto)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=None, help="run directories + results.json (default runs/compare/<mode>)")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks_compare.md"), help="markdown to write ('-': none)")
    p.add_argument("--fresh", action="store_true", help="discard cached results and runs in --output")
    p.add_argument("--retime", action="store_true", help="measure ORT latency again even when nothing is new")
    p.add_argument("--no-install", action="store_true", help="never pip install matplotlib for the plot")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show the library's own output instead of logging it per cell")
    args = p.parse_args(argv)
    check_jobs_and_device(p, args)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    for key, value in MODES[args.mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not 1 <= args.search_epochs < args.budget:
        sys.exit("error: need 1 <= --search-epochs < --budget (TAS must distil at least one epoch)")
    args.output = args.output or str(REPO / "runs" / "compare" / args.mode)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_run(args)
    start = time.perf_counter()
    bench = Bench(args)
    cells = [(m, r, s, meth) for m in args.models for r in args.ratios for s in args.seeds for meth in args.methods]
    log(f"{args.mode}: {len(cells)} cells ({len(args.models)} model(s) x {len(args.ratios)} ratio(s) x "
        f"{len(args.seeds)} seed(s) x {len(args.methods)} methods), budget {args.budget} epochs, "
        f"{args.limit} images at {args.img_size}px -> {args.output}")
    bench.run_cells(args.models, cells, start, lambda res: (
        f"top-1 {res['top1']:.2f}%, FLOPs {res['flops_ratio']:.3f}, params {res['params_ratio']:.3f}, "
        f"prune {res['prune_s']:.0f}s + distil {res['distill_s']:.0f}s"), after_model=bench.add_robustness, jobs=args.jobs)
    results = bench.results
    rows, rd_rows = summarize(results, args.models, args.ratios, args.methods)
    robust_rows = summarize_robustness(results, args.models, args.ratios, args.methods)
    log("\n" + format_table(rows, HEADER))
    log("\n" + format_table(robust_rows, ROBUST_HEADER))
    per_model = [[c["model"], c["method"], f"{c['ratio']:.2f}", c["seed"], f"{c['top1']:.2f}",
                  f"{c['recall']['teacher_accuracy']:.2f}", f"{c['recall']['slim_accuracy']:.2f}",
                  f"{100 * c['recall']['mean_change_below']:+.2f}" if c["recall"]["mean_change_below"] is not None else "–",
                  f"{100 * c['recall']['mean_change_above']:+.2f}" if c["recall"]["mean_change_above"] is not None else "–",
                  "yes" if c["recall"]["intensified"] else "no"]
                 for c in sorted(results["cells"].values(), key=lambda c: (c["model"], -c["ratio"], c["method"], c["seed"]))
                 if c["model"] in args.models and c["ratio"] in args.ratios and c["method"] in args.methods]
    log("\nrecall distortion per slim network (teacher vs slim on the test images):")
    log(format_table(per_model, ["model", "method", "FLOPs target", "seed", "top-1", "teacher acc.",
                                 "slim acc.", "mean Δrecall below %", "mean Δrecall above %", "intensified"]))
    png = None
    why = None
    if args.doc != "-":
        png = Path(args.doc).with_suffix(".png")
        why = plot(results, args.models, args.methods, png, install=not args.no_install)
        if why:
            log(f"no plot: {why}")
            png = None
        args.default_methods, args.default_ratios = METHODS, MODES[args.mode]["ratios"]
        text = render(args, results, rows, rd_rows, png, why, time.perf_counter() - start, robust_rows)
        write_report(args.doc, text)
        log(f"wrote {args.doc}" + (f" and {png}" if png else ""))
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
