"""What does a TAS search iteration cost next to a dense training step of the same backbone?

For each model (default ``cifar_resnet20`` at 3x32x32, batch 64, and timm ``resnet18`` at 3x64x64,
batch 32; 10 classes, random weights and data) this times, in one process and *interleaved* (the
order of the two measurements alternates every repeat, so drift and other load on the machine hit
both alike), after warm-up:

(a) **dense step** -- the plain backbone: forward + cross-entropy + backward + SGD step on one batch;
(b) **search iteration** -- exactly what ``tas.nas.run.search`` does per step: the *weight step*
    (supernet in search mode, CE, backward, SGD on ``Supernet.weight_parameters()``) on one batch,
    then the *architecture step* ``ArchStepper.step`` (CE + cost loss, Adam on alpha/beta) on another
    batch of the same size B. (b) is timed as one block; the two halves are timestamps inside it.

Two ratios are reported, because "overhead" can mean either:

* **per iteration**  = (b) / (a): one search iteration against one dense step;
* **per sample**     = ((b) / 2B) / ((a) / B) = (b) / (2a): a search iteration processes 2B images
  (B through the weight step, B through the architecture step), a dense step B.

Optimisers use ``SearchConfig``'s defaults (SGD lr 0.05, momentum 0.9, nesterov, wd 5e-4 for the
weights -- the dense step uses the same -- and Adam lr 0.05 for alpha/beta, FLOPs target 0.5).
tau is fixed (default 5.0, the start of the cosine schedule). The architecture logits are reset to
their initial values before every search iteration (``--no-reset-arch`` lets them drift), so every
repeat measures the same start-of-search distribution: near-uniform over the widths, which is the
widest (most expensive) phase of a search -- as the budget pulls alpha to narrower widths the
sampled networks and the iteration get cheaper.

    python benchmarks/search_overhead.py                 # the table, < 5 min on 2 cores -> docs/benchmarks_search_overhead.md
    python benchmarks/search_overhead.py --quick         # ~1 min smoke run
    python benchmarks/search_overhead.py --profile       # + where the overhead goes (ablations, op table)
    python benchmarks/search_overhead.py --models cifar_resnet56:32:64 resnet50:96:16 --threads 2 1

``--profile`` adds, per model: the cost of the Python-side pieces of a step (``Supernet.sample``,
``expected_cost``, ``current_cost``), the FLOPs of the network a search-mode forward actually
computes (:func:`tas.nas.profile.sampled_flops`), paired ablations of the weight and architecture
steps with the still-open candidate optimisations (``fold``, ``gather``: ``search_overhead_profile.py``) applied
*in this process only* by patching (tas itself is not changed; each patch is checked to give the
same output as the original), and torch.profiler's top operators per step
(:func:`tas.nas.profile.op_table`).

Not a test: nothing here asserts; the markdown is the result.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tas  # noqa: E402,F401  (registers cifar_resnet* with timm)
from benchkit import write_report  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.nas.arch_step import ArchStepper  # noqa: E402
from tas.nas.config import SearchConfig  # noqa: E402
from tas.nas.supernet import create_supernet  # noqa: E402

DEFAULT_MODELS = ["cifar_resnet20:32:64", "resnet18:64:32"]
NOISY = 0.3  # a row whose paired-ratio IQR exceeds this fraction of its median is flagged
#: issue 20: a search iteration per training image, against a dense step (the paired median /2)
PER_SAMPLE_TARGETS = {"cifar_resnet20": 1.3, "resnet18": 1.0}
NUM_CLASSES = 10


def parse_spec(spec: str) -> tuple[str, int, int]:
    """``name[:size[:batch]]``; cifar_* default to 32 px / batch 64, everything else 64 px / batch 32."""
    parts = spec.split(":")
    name = parts[0]
    size, batch = (32, 64) if name.startswith("cifar_") else (64, 32)
    if len(parts) > 1 and parts[1]:
        size = int(parts[1])
    if len(parts) > 2 and parts[2]:
        batch = int(parts[2])
    return name, size, batch


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


# ------------------------------------------------------------------------------------------------
# The two measured workloads
# ------------------------------------------------------------------------------------------------
class Bench:
    """A dense backbone and its supernet (same initial weights), their optimisers and fixed batches."""

    def __init__(self, name: str, size: int, batch: int, seed: int = 0, tau: float = 5.0,
                 reset_arch: bool = True, device: str = "cpu") -> None:
        cfg = SearchConfig()
        cfg.validate()
        self.name, self.size, self.batch, self.reset = name, size, batch, reset_arch
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.dense = timm.create_model(name, num_classes=NUM_CLASSES, in_chans=3).train()
        self.supernet = create_supernet(copy.deepcopy(self.dense), input_size=(3, size, size), model_name=name).train()
        self.dense.to(self.device)
        self.supernet.to(self.device)
        self.supernet.tau = tau
        self.supernet.generator = torch.Generator(device=self.device).manual_seed(seed)  # as the Searcher
        g = torch.Generator().manual_seed(seed + 1)
        self.batches = [(torch.randn(batch, 3, size, size, generator=g).to(self.device),
                         torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(self.device)) for _ in range(2)]
        sgd = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
        self.d_opt = torch.optim.SGD(self.dense.parameters(), **sgd)
        self.w_params = list(self.supernet.weight_parameters())
        self.a_params = list(self.supernet.arch_parameters())
        self.w_opt = torch.optim.SGD(self.w_params, **sgd)
        self.stepper = ArchStepper(self.supernet, cfg.metric, cfg.ratio, cfg.tolerance, cfg.cost_weight,
                                   cfg.arch_lr, cfg.arch_weight_decay)
        self.arch0 = [p.detach().clone() for p in self.a_params]

    def reset_arch(self) -> None:
        if self.reset:
            with torch.no_grad():
                for p, p0 in zip(self.a_params, self.arch0):
                    p.copy_(p0)

    def clock(self) -> float:
        """Now, once the GPU (if any) has finished what was queued: GPU work runs asynchronously."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # (a)
    def dense_step(self) -> float:
        x, y = self.batches[0]
        t0 = self.clock()
        loss = F.cross_entropy(self.dense(x), y)
        check(loss.item(), "dense loss")
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        return self.clock() - t0

    # (b), as tas.nas.searcher.Searcher does it
    def weight_step(self) -> None:
        x, y = self.batches[0]
        loss = F.cross_entropy(self.supernet(x), y)
        check(loss.item(), "weight loss")
        self.w_opt.zero_grad(set_to_none=True)
        # only the weights, as the Searcher: the Gumbel weights' and alpha/beta's gradients would be thrown away
        loss.backward(inputs=self.w_params)
        self.w_opt.step()

    def arch_step(self) -> None:
        x, y = self.batches[1]
        self.stepper.step(x, y)

    def search_iter(self) -> tuple[float, float]:
        """(weight step seconds, arch step seconds) of one full search iteration."""
        self.reset_arch()
        t0 = self.clock()
        self.weight_step()
        t1 = self.clock()
        self.arch_step()
        t2 = self.clock()
        return t1 - t0, t2 - t1


def operators(step: Callable[[], object]) -> int:
    """ATen operators ``step()`` dispatches (each kernel-running one is a launch on a GPU, so on a GPU
    a step of small tensors costs about its operator count; counted on any device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return Count.n


def check(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise RuntimeError(f"{what} is {value}; the benchmark's random training diverged")


def run_main(bench: Bench, warmup: int, repeats: int, max_seconds: float, log: Callable[[str], None]) -> dict:
    dense, wstep, astep = [], [], []
    start = time.perf_counter()
    for r in range(warmup + repeats):
        if r % 2 == 0:
            d = bench.dense_step()
            w, a = bench.search_iter()
        else:
            w, a = bench.search_iter()
            d = bench.dense_step()
        if r >= warmup:
            dense.append(d)
            wstep.append(w)
            astep.append(a)
            if time.perf_counter() - start > max_seconds and len(dense) >= 5:
                log(f"  {bench.name}: stopping after {len(dense)} repeats (--max-seconds {max_seconds:g})")
                break
    search = [w + a for w, a in zip(wstep, astep)]
    bench.reset_arch()
    ops = {"dense_ops": operators(bench.dense_step), "weight_ops": operators(bench.weight_step),
           "arch_ops": operators(bench.arch_step)}
    paired = [s / d for s, d in zip(search, dense)]
    ms = lambda xs: 1e3 * median(xs)  # noqa: E731
    a_ms, b_ms = ms(dense), ms(search)
    return {"model": bench.name, "size": bench.size, "batch": bench.batch, "threads": torch.get_num_threads(),
            "repeats": len(dense), "dense_ms": a_ms, "weight_ms": ms(wstep), "arch_ms": ms(astep), "search_ms": b_ms,
            "per_iter": b_ms / a_ms, "paired": median(paired), "per_iter_iqr": quartiles(paired),
            "per_sample": b_ms / (2 * a_ms),
            "weight_ratio": ms(wstep) / a_ms, "arch_ratio": ms(astep) / a_ms,
            "seconds": time.perf_counter() - start, **ops}




def render(results: list[dict], profiles: list[str], args, argv: list[str], elapsed: float) -> str:
    gpu = (f"; every step on {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
           if args.device != "cpu" and torch.cuda.is_available() else "")
    rows = []
    for r in results:
        lo, hi = r["per_iter_iqr"]
        noisy = (hi - lo) > NOISY * r["paired"]
        rows.append([r["model"], f"{r['size']}x{r['size']}", r["batch"], r["threads"], f"{r['repeats']}{' †' if noisy else ''}",
                     f"{r['dense_ms']:.1f}", f"{r['weight_ms']:.1f} ({r['weight_ratio']:.2f}x)",
                     f"{r['arch_ms']:.1f} ({r['arch_ratio']:.2f}x)", f"{r['search_ms']:.1f}",
                     f"**{r['per_iter']:.2f}x**", f"{r['paired']:.2f}x ({lo:.2f}-{hi:.2f})",
                     f"**{r['per_sample']:.2f}x**", f"{r['paired'] / 2:.2f}x",
                     f"{r['dense_ops']} / {r['weight_ops']} / {r['arch_ops']} "
                     f"({(r['weight_ops'] + r['arch_ops']) / r['dense_ops']:.1f}x)"])
    header = ["model", "input", "B", "threads", "repeats", "(a) dense step ms", "weight step ms (/a)",
              "arch step ms (/a)", "(b) search iter ms", "per iteration (b)/(a)", "paired (b)/(a) [IQR]",
              "per sample (b)/(2a)", "paired /2", "operators: dense / weight / arch (iteration/dense)"]
    table = format_table(rows, header)
    cmd = "python benchmarks/search_overhead.py" + ("" if not argv else " " + " ".join(argv))
    cpu = platform.processor() or platform.machine()
    try:
        load = ("1-min load average %.1f at the start, %.1f at the end (other processes share the cores: "
                "compare the paired columns)" % (args.load_start, os.getloadavg()[0]))
    except (OSError, AttributeError):
        load = "load average unknown"
    text = [
        "# Search overhead: a TAS search iteration vs a dense training step",
        "",
        "Generated by `benchmarks/search_overhead.py` (reproduce with the command below; see its docstring for "
        "exactly what is timed).",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}, {platform.system()}), torch {torch.__version__}, "
        f"timm {timm.__version__}, Python {platform.python_version()}; `torch.set_num_threads` as in the "
        f"threads column{gpu}; {load}. Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min.",
        "",
        "* **(a) dense step**: the plain backbone, forward + cross-entropy + backward + SGD step on one batch of B.",
        "* **(b) search iteration**: the weight step (supernet in search mode, CE, backward, SGD on the weights) on "
        "one batch of B, then `ArchStepper.step` (CE + cost loss, backward, Adam on alpha/beta) on another batch of B. "
        "Weight and arch columns are the two halves of (b) (their medians need not add up to (b)'s).",
        "* **per iteration** = (b)/(a): one search iteration against one dense step, as the ratio of the two medians. "
        "*paired* is the median (and quartiles) of the per-repeat ratios: each repeat's (a) and (b) run back to "
        "back and share that moment's machine load, so on a busy machine it is the steadier estimate.",
        "* **per sample** = ((b)/2B) / ((a)/B) = (b)/(2a): time per training image, since a search iteration pushes "
        "2B images through the network (B in each step) and a dense step B; *paired /2* is the same from the "
        "paired ratio.",
        "* **operators**: ATen operators one dense step, one weight step and one architecture step dispatch "
        "(after the timed repeats). On a GPU each kernel-running one is a launch, and the small networks here "
        "take longer to launch than to compute, so the iteration/dense ratio of these counts predicts a GPU's "
        "per-iteration ratio better than the CPU timings do.",
        f"* Medians after {args.warmup} warm-up repeats; (a) and (b) interleaved, order alternating. "
        f"tau = {args.tau:g}; architecture logits "
        + ("reset to their initialisation before every iteration (the near-uniform, widest phase of a search)."
           if not args.no_reset_arch else "left to drift with the arch steps."),
        "",
        table,
        "",
    ]
    noisy = [r for r in results if (r["per_iter_iqr"][1] - r["per_iter_iqr"][0]) > NOISY * r["paired"]]
    if noisy:
        text += [f"† the per-repeat ratios of this row spread widely (interquartile range over {NOISY:.0%} of their "
                 "median): the load other processes put on the machine changed during it, which also cut its repeats "
                 "short (`--max-seconds`). Absolute times and the ratio of medians of such a row mean little; the "
                 "paired column is the better estimate, and a rerun on a quiet machine the real fix.", ""]
    judged = [r for r in results if r["model"] in PER_SAMPLE_TARGETS]
    if judged:
        verdicts = [f"{r['model']} {r['threads']} thread(s) {r['paired'] / 2:.2f}x "
                    f"({'met' if r['paired'] / 2 <= PER_SAMPLE_TARGETS[r['model']] else 'MISSED'})" for r in judged]
        text += ["Against issue 20's per-sample targets (paired median /2; "
                 + ", ".join(f"{m} <= {t}x" for m, t in PER_SAMPLE_TARGETS.items()) + "): "
                 + "; ".join(verdicts) + ".", ""]
    if profiles:
        from search_overhead_profile import LEGEND

        text += ["## Where the overhead goes (`--profile`)", "", *LEGEND, ""] + profiles
    return "\n".join(text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME[:SIZE[:BATCH]]",
                   help="timm names (cifar_* too), optionally with input size and batch "
                        f"(default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per model (default 40; --quick 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repeats first (default 3; --quick 2)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop a model's repeats (and its ablations) after this long, at least 5 repeats "
                        "(default 100; --quick 20), so a loaded machine still finishes in time")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads; several give a row each (default 2)")
    p.add_argument("--tau", type=float, default=5.0, help="Gumbel temperature (default 5.0, the schedule's start)")
    p.add_argument("--no-reset-arch", action="store_true", help="let alpha/beta drift instead of resetting them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (timed with a synchronize at each clock reading)")
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run of about a minute")
    p.add_argument("--profile", action="store_true",
                   help="also break the overhead down: Python pieces, ablations with candidate optimisations, op table")
    p.add_argument("--profile-threads", type=int, default=None,
                   help="--profile: profile the row with this many threads (default: the first of --threads)")
    p.add_argument("--ablation-repeats", type=int, default=None, help="--profile: repeats of each ablation (default 15; --quick 3)")
    p.add_argument("--micro-repeats", type=int, default=200, help="--profile: calls per Python-piece timing")
    p.add_argument("--profile-steps", type=int, default=None, help="--profile: steps under torch.profiler (default 5; --quick 2)")
    p.add_argument("--top-ops", type=int, default=12, help="--profile: operators listed per step")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks_search_overhead.md"),
                   help="markdown file to write ('-' to only print)")
    args = p.parse_args(argv)
    if args.profile_threads is not None and args.profile_threads not in args.threads:
        p.error("--profile-threads must be one of --threads")
    q = args.quick
    args.repeats = args.repeats or (8 if q else 40)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 3)
    args.max_seconds = args.max_seconds or (20.0 if q else 100.0)
    args.ablation_repeats = args.ablation_repeats or (3 if q else 15)
    args.profile_steps = args.profile_steps or (2 if q else 5)
    if q:
        args.micro_repeats = min(args.micro_repeats, 30)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        args.load_start = os.getloadavg()[0]
    except OSError:
        args.load_start = float("nan")
    t0 = time.perf_counter()
    results, profiles = [], []
    for spec in args.models:
        name, size, batch = parse_spec(spec)
        for threads in args.threads:
            torch.set_num_threads(threads)
            log(f"{name} {size}x{size} batch {batch}, {threads} threads: building")
            bench = Bench(name, size, batch, seed=args.seed, tau=args.tau, reset_arch=not args.no_reset_arch,
                          device=args.device)
            log(f"  timing {args.warmup} + {args.repeats} repeats")
            r = run_main(bench, args.warmup, args.repeats, args.max_seconds, log)
            log(f"  dense {r['dense_ms']:.1f} ms, search {r['search_ms']:.1f} ms "
                f"(weight {r['weight_ms']:.1f}, arch {r['arch_ms']:.1f}): per iteration {r['per_iter']:.2f}x, "
                f"per sample {r['per_sample']:.2f}x")
            results.append(r)
            if args.profile and threads == (args.profile_threads or args.threads[0]):
                # run as a script this module is __main__: the profile module must find it under its own name
                sys.modules.setdefault("search_overhead", sys.modules[__name__])
                from search_overhead_profile import run_profile

                profiles.append(run_profile(bench, args, log))
    text = render(results, profiles, args, argv, time.perf_counter() - t0)
    print(text)
    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_report(args.output, text)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
