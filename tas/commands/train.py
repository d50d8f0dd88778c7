"""Train a network and write a run directory (weights, config, metrics, TensorBoard, resume state).

Stage 1 of the pipeline, the original (teacher) network, any timm model, and stage 3, the searched
slim network distilled from it (``tas train``, ``tas-train`` or, in a checkout, ``python train.py``)::

  tas train --model cifar_resnet20 --dataset digits --epochs 3 --output runs/teacher
  tas train --config teacher.yaml --lr 0.05        # flags override the YAML
  tas train --output runs/teacher --epochs 6 --resume
  tas train --arch runs/search/arch.json --teacher runs/teacher --epochs 3 --output runs/slim

Errors in what you pass (unknown model or dataset, missing files, a run that would be
overwritten) print one ``error:`` line and exit with code 2.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from ..cli import DATASET_HELP, HelpFormatter, add_device_flags, epoch_count, parse_args
from ..train.config import INITS, SCHEDULERS, TrainConfig
from ..train import run as train_run


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("::\n\n")[1].split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of flag values; flags given here override it")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="timm model name (tas adds cifar_resnet20/32/44/56/110)")
    g.add_argument("--pretrained", action="store_true", help="start from timm's published weights (downloads)")
    g.add_argument("--pretrained-path", default=d.pretrained_path,
                   help="start from local weights (.safetensors or a torch state dict)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help=DATASET_HELP)
    g.add_argument("--data-dir", default=d.data_dir, help="dataset location (digits needs none)")
    g.add_argument("--download", action="store_true", help="allow downloading the dataset (CIFAR only)")
    g.add_argument("--img-size", type=int, default=d.img_size, help="image side (default: the dataset's)")
    g.add_argument("--limit", type=int, default=d.limit, help="at most this many samples per split (smoke tests)")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=epoch_count, default=d.epochs,
                   help="passes over the training split (fractions allowed: 3.5 stops halfway through the fourth)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to biases and norms")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--opt", default=d.opt, help="timm optimizer name (sgd is Nesterov SGD)")
    g.add_argument("--sched", default=d.sched, choices=SCHEDULERS, help="learning-rate schedule, stepped per update")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warmup length (fractions allowed)")
    g.add_argument("--warmup-lr", type=float, default=d.warmup_lr, help="learning rate the warmup starts from")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate the schedule ends at")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--seed", type=int, default=d.seed)

    g = p.add_argument_group("run")
    g.add_argument("--output", default=d.output, help="run directory to write")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last epoch")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run in --output (only once this one finishes)")
    g.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--log-every", type=int, default=d.log_every, help="TensorBoard train/* every N updates")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also save the resumable state every N updates (0: only at epoch ends)")
    g.add_argument("--nan-policy", default=d.nan_policy, choices=("stop", "skip"),
                   help="on a NaN/inf loss: stop (exit 3, last good checkpoint kept) or skip the step")
    add_device_flags(g)

    g = p.add_argument_group("distillation of a pruned network (stage 3)")
    g.add_argument("--arch", default=d.arch, help="arch.json (or a search run directory): train this slim network")
    g.add_argument("--teacher", default=d.teacher, help="run directory of the network the arch was searched from")
    g.add_argument("--init", default=d.init, choices=INITS,
                   help="start from the teacher's kept channels, from them refitted layer by layer to the "
                        "teacher's outputs (L-OBS-style least squares), from random weights (the paper), or "
                        "from the search's own weights (the supernet's, saved in the --arch run directory)")
    g.add_argument("--recon-batches", type=int, default=d.recon_batches,
                   help="--init reconstruct: training batches the least squares are fitted on")
    g.add_argument("--kd-alpha", type=float, default=d.kd_alpha, help="weight of the KD term")
    g.add_argument("--kd-temperature", type=float, default=d.kd_temperature, help="softmax temperature T")
    g.add_argument("--no-kd", action="store_true", help="plain cross-entropy (for comparison)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(build_parser(prog), argv)

    train_run.train(args, mode="distill" if args.arch else "teacher")
    return 0

