"""Search a pruned architecture of a trained network with TAS and write arch.json.

Stage 2 of the pipeline (``tas search``, ``tas-search`` or, in a checkout, ``python search.py``)::

  tas search --teacher runs/teacher --dataset digits --flops-ratio 0.5 --epochs 2 --output runs/search
  tas search --teacher runs/teacher --dataset mydata:load --output runs/search   # your own data
  tas search --config search.yaml --arch-lr 0.01     # flags override the YAML
  tas search --output runs/search --epochs 4 --resume

Errors in what you pass print one ``error:`` line and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from ..baselines import METHODS
from ..prune.channel_order import CRITERIA
from ..cli import DATASET_HELP, HelpFormatter, add_device_flags, epoch_count, parse_args
from ..nas.arch_step import ARCH_LR_SCHEDULES
from ..nas.config import SEARCH_DEPTH, SearchConfig
from ..nas.run import search
from ..baselines import run_baseline


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = SearchConfig()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="examples:\n" + __doc__.split("::\n\n")[1].split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of flag values; flags given here override it")
    _model_flags(p, d)
    _budget_flags(p, d)
    _data_flags(p, d)
    _optimisation_flags(p, d)
    _run_flags(p, d)
    return p


def _model_flags(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    """The teacher, the method and the search space (incl. SA++)."""
    g = p.add_argument_group("model and space")
    g.add_argument("--teacher", default=d.teacher, help="run directory of the trained network (train.py --output)")
    g.add_argument("--model", default=d.model, help="timm model name; must match the teacher's (optional)")
    g.add_argument("--method", default="tas", choices=METHODS,
                   help="tas, or a baseline pruner on the same space (tas.baselines; ignores TAS's optimisation "
                        "flags, except plasticity, which fine-tunes --epochs with --lr, --momentum, --weight-decay)")
    g.add_argument("--space", default=d.space, help="search space preset name or YAML path (default: the model's preset)")
    g.add_argument("--search-depth", default=d.search_depth, choices=SEARCH_DEPTH,
                   help="on: search each stage's depth as the space says; off: keep every block, search widths "
                        "only; auto: off where widths alone reach a FLOPs/params target, on below that and for "
                        "latency targets")
    g.add_argument("--k", type=int, default=d.k, help="fragments sampled per group (default: the space's)")
    g.add_argument("--channel-order", default=d.channel_order, choices=CRITERIA,
                   help="order each group's teacher channels by importance before the search, so a width's "
                        "prefix keeps the most important ones (arch.json indices stay the teacher's; "
                        "default: l1 for --selection prefix, none for sapp; task: task-aware calibration, "
                        "needs --task-classes)")
    g.add_argument("--task-classes", type=int, nargs="+", default=d.task_classes,
                   help="class ids of the task that --channel-order task and --method task-aware calibrate on")
    g.add_argument("--limit-widths", action="store_true",
                   help="drop every group's candidate widths below its pruning-limit estimate (python -m "
                        "tas.analyze; Zhang et al. 2024) before the search")
    g.add_argument("--selection", default=d.selection, choices=("prefix", "sapp"),
                   help="which channels a width keeps: TAS's first ones, or SA++ block attention")
    g.add_argument("--block-size", type=int, default=d.block_size, help="SA++ channels per block (default: the space's divisor)")
    g.add_argument("--attn-lr", type=float, default=d.attn_lr, help="SA++ attention logits: Adam, stepped with the weights")
    g.add_argument("--attn-weight-decay", type=float, default=d.attn_weight_decay)
    for phase in ("warmup", "sparsify", "sparse", "dense"):
        g.add_argument(f"--sapp-{phase}", type=float, default=getattr(d, f"sapp_{phase}"),
                       help=f"SA++ {phase} phase length, fraction of the search")
    g.add_argument("--sapp-rounds", type=int, default=d.sapp_rounds, help="SA++ sparsify/sparse/dense rounds")
    g.add_argument("--sapp-anneal", action=argparse.BooleanOptionalAction, default=d.sapp_anneal,
                   help="anneal the SA++ attention to 1 over the last phase instead of folding it into the slim network's BNs")


def _budget_flags(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    """The cost target and how the search meets it."""
    g = p.add_argument_group("budget")
    g.add_argument("--flops-ratio", type=float, default=d.flops_ratio, help="fraction of FLOPs to keep (default 0.5)")
    g.add_argument("--params-ratio", type=float, default=d.params_ratio, help="fraction of params to keep")
    g.add_argument("--latency-ratio", type=float, default=d.latency_ratio,
                   help="fraction of the original's measured latency to keep (a FLOPs/params ratio given "
                        "beside it becomes a ceiling)")
    g.add_argument("--runtime", default=d.runtime, choices=("ort-cpu", "torch-cpu", "torch-cuda"),
                   help="where latency is measured (tables cached under ~/.cache/tas/latency)")
    g.add_argument("--latency-batch", type=int, default=d.latency_batch, help="batch size latency is measured at")
    g.add_argument("--latency-threads", type=int, default=d.latency_threads,
                   help="threads latency is measured with (default: torch's; under torchrun, which sets "
                        "OMP_NUM_THREADS=1, give the deployment's)")
    g.add_argument("--latency-feedback", type=int, default=d.latency_feedback, metavar="ROUNDS",
                   help="after a --latency-ratio search (ort-cpu), time the slim network beside the original and, "
                        "while it misses the target by more than 2.5%%, decode again against a target corrected "
                        "by the miss, up to ROUNDS times (0: trust the table)")
    g.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="accepted shortfall below the target, as a fraction of the target (0.1: a 0.5 FLOPs "
                        "target accepts 0.45-0.5 of the full FLOPs)")
    g.add_argument("--fill-budget", action=argparse.BooleanOptionalAction, default=d.fill_budget,
                   help="decode the final architecture up to the target rather than anywhere in the tolerance "
                        "band (default: on for --latency-ratio, off for FLOPs/params)")
    g.add_argument("--cost-loss", default=d.cost_loss, choices=("lagrangian", "tas"),
                   help="budget term of the architecture step: dual ascent on the expected cost "
                        "(lambda1*(s-t) + lambda2*(s-t)^2, t the band's middle), or the paper's +-log E[cost]")
    g.add_argument("--dual-lr", type=float, default=d.dual_lr, help="ascent step of the Lagrangian's multipliers")
    g.add_argument("--cost-weight", type=float, default=d.cost_weight,
                   help="weight of the TAS cost loss (and of a ceiling's) in the architecture step")
    g.add_argument("--decode", action=argparse.BooleanOptionalAction, default=d.decode,
                   help="move a final argmax outside the band into it (the safety net); --no-decode keeps the "
                        "argmax as the search left it")


def _data_flags(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    """The dataset."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help=DATASET_HELP)
    g.add_argument("--data-dir", default=d.data_dir, help="dataset location (digits needs none)")
    g.add_argument("--download", action="store_true", help="allow downloading the dataset (CIFAR only)")
    g.add_argument("--img-size", type=int, default=d.img_size, help="default: the teacher's input size")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random training augmentation (a distributed search then equals a single-process one)")
    g.add_argument("--limit", type=int, default=d.limit, help="at most this many samples per split (smoke tests)")
    g.add_argument("--workers", type=int, default=d.workers)


def _optimisation_flags(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    """The weight and architecture steps."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=epoch_count, default=d.epochs,
                   help="passes over the search's weight half (fractions allowed: 0.5 stops halfway)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="weight step: Nesterov SGD, cosine")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--arch-lr", type=float, default=d.arch_lr, help="architecture step: Adam, betas (0.5, 0.999)")
    g.add_argument("--arch-weight-decay", type=float, default=d.arch_weight_decay)
    g.add_argument("--arch-lr-schedule", default=d.arch_lr_schedule, choices=ARCH_LR_SCHEDULES,
                   help="architecture step's learning rate over the search: constant (the paper's) or, after "
                        "--arch-lr-hold, cosine to 0, which freezes the logits late so the argmax stops flipping "
                        "across the band's edges")
    g.add_argument("--arch-lr-hold", type=float, default=d.arch_lr_hold,
                   help="fraction of the search the architecture step runs at --arch-lr before the cosine decay "
                        "(time for the budget controller to bring the costs to the band)")
    g.add_argument("--arch-draws", type=int, default=d.arch_draws,
                   help="Gumbel draws per architecture step: the val batch split into this many chunks, each "
                        "through its own draw (the CE gradient's noise is the draws', not the batch's)")
    g.add_argument("--arch-ce-weight", type=float, default=d.arch_ce_weight,
                   help="weight of the val loss in the architecture step (0: budget and entropy terms alone, "
                        "an ablation of what the data decides)")
    g.add_argument("--entropy-weight", type=float, default=d.entropy_weight,
                   help="weight of the mean normalised entropy of the width and depth distributions in the "
                        "architecture loss, ramped from 0 to this over the search (commits each distribution)")
    g.add_argument("--landing-steps", type=float, default=d.landing_steps,
                   help="after the search, at most this fraction of its architecture steps more, taken only while "
                        "the argmax lies outside the band (0: none; the decode then moves it)")
    g.add_argument("--landing-lr", type=float, default=d.landing_lr,
                   help="the landing steps' learning rate, as a fraction of --arch-lr")
    g.add_argument("--kd-alpha", type=float, default=d.kd_alpha,
                   help="weight step: weight of the KD term from the teacher, (1-a)*CE + a*T^2*KL (0: CE "
                        "alone, the paper's); what train.py --init search then starts from")
    g.add_argument("--arch-kd-alpha", type=float, default=d.arch_kd_alpha,
                   help="architecture step: the same KD objective on the val half, from the teacher's soft "
                        "targets (0: CE alone, the paper's)")
    g.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    g.add_argument("--arch-warmup", type=float, default=d.arch_warmup,
                   help="fraction of the search's steps that train the weights only, before the first "
                        "architecture step")
    g.add_argument("--arch-steps", type=float, default=d.arch_steps,
                   help="architecture steps per weight step, each on its own val batch (0.5: one after "
                        "every second weight step)")
    g.add_argument("--tau-max", type=float, default=d.tau_max)
    g.add_argument("--tau-min", type=float, default=d.tau_min)
    g.add_argument("--tau-schedule", default=d.tau_schedule, choices=("cosine", "linear"))
    g.add_argument("--seed", type=int, default=d.seed)


def _run_flags(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    """The run directory, device, logging and checkpoints."""
    g = p.add_argument_group("run")
    g.add_argument("--output", default=d.output)
    g.add_argument("--resume", action="store_true")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also save the resumable state every N steps (0: only at epoch ends)")
    g.add_argument("--nan-policy", default=d.nan_policy, choices=("stop", "skip"),
                   help="on a NaN/inf loss: stop (exit 3, last good checkpoint kept) or skip the step")
    g.add_argument("--no-progress", action="store_true")
    add_device_flags(g)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(build_parser(prog), argv)
    if args.method != "tas":
        if os.environ.get("RANK", "0") != "0":
            return 0  # a baseline runs in one process: under torchrun, rank 0 runs it alone

        run_baseline(args)
        return 0

    search(args)
    return 0

