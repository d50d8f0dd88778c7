"""The settings of a training run (:class:`TrainConfig`): ``tas train``'s flags, checked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cli import RunSettings, check_epochs, config_from_args
from ..errors import TasError
from .amp import check_amp

__all__ = ["INITS", "SCHEDULERS", "TrainConfig"]

#: learning-rate schedules accepted by ``--sched`` (all stepped per update, with linear warmup)
SCHEDULERS = ("cosine", "tanh", "poly", "multistep", "none")
#: how a distilled slim network starts (``--init``): the teacher's kept channels, those refitted by
#: :func:`tas.prune.reconstruct.reconstruct`, or random weights
INITS = ("inherit", "reconstruct", "scratch", "search")


@dataclass
class TrainConfig(RunSettings):
    """Every setting of a training run; train.py's flags map one to one (dashes -> underscores).

    The defaults train cifar_resnet20 on the bundled digits set to >90% test top-1 in 3 epochs
    on two CPU cores; for CIFAR use e.g. ``--epochs 200 --batch-size 128``.
    """

    model: str = "cifar_resnet20"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None
    epochs: int | float = 3
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    opt: str = "sgd"
    sched: str = "cosine"
    warmup_epochs: float = 0.5
    warmup_lr: float = 1e-3
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    output: str = "runs/teacher"
    pretrained: bool = False
    pretrained_path: str | None = None
    amp: str | None = None
    channels_last: bool = False
    # distillation of a pruned network (mode "distill")
    arch: str | None = None
    teacher: str | None = None
    init: str = "inherit"
    recon_batches: int = 8
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    no_kd: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "TrainConfig":
        """From an argparse ``Namespace``, a mapping or a ``TrainConfig``; unknown keys are ignored,
        missing ones take the defaults, and ``no_progress`` maps to ``progress``."""
        return config_from_args(cls, args)

    def validate(self) -> None:
        """Raise :class:`TasError` naming the first flag with an impossible value."""
        def bad(flag: str, value: Any, need: str) -> TasError:
            return TasError(f"--{flag} must be {need}, got {value!r}")

        self.epochs = check_epochs(self.epochs)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad("batch-size", self.batch_size, "a positive integer")
        for name in ("lr", "weight_decay", "momentum", "warmup_epochs", "warmup_lr", "min_lr", "label_smoothing"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise bad(name.replace("_", "-"), value, "a non-negative number")
        if self.lr <= 0:
            raise bad("lr", self.lr, "positive")
        if self.sched not in SCHEDULERS:
            raise bad("sched", self.sched, f"one of {', '.join(SCHEDULERS)}")
        self.validate_run()
        check_amp(self.amp)
        if self.init not in INITS:
            raise bad("init", self.init, ", ".join(INITS))
        if not isinstance(self.recon_batches, int) or self.recon_batches < 1:
            raise bad("recon-batches", self.recon_batches, "a positive integer")
        if not 0 <= self.kd_alpha <= 1:
            raise bad("kd-alpha", self.kd_alpha, "in [0, 1]")
        if self.kd_temperature <= 0:
            raise bad("kd-temperature", self.kd_temperature, "positive")
