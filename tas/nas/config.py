"""The settings of a search (:class:`SearchConfig`): ``tas search``'s flags, checked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cli import RunSettings, check_epochs, config_from_args
from ..errors import TasError
from ..prune.channel_order import CRITERIA
from ..train.amp import check_amp
from .arch_step import ARCH_LR_SCHEDULES, SHARP_VALUES
from .cost import COST_LOSSES, budget_band

__all__ = ["SearchConfig", "SEARCH_DEPTH"]

#: ``--search-depth``: the space's depth candidates (``on``), every block kept (``off``), or kept
#: wherever widths alone reach a FLOPs or params target (``auto``; see :func:`tas.nas.narrow.choose_depth`)
SEARCH_DEPTH = ("on", "off", "auto")


@dataclass
class SearchConfig(RunSettings):
    """Every setting of a search; search.py's flags map one to one (dashes -> underscores)."""

    teacher: str | None = None
    model: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None
    augment: bool = True
    space: str | None = None
    search_depth: str = "on"
    flops_ratio: float | None = None
    params_ratio: float | None = None
    latency_ratio: float | None = None
    runtime: str = "ort-cpu"
    latency_batch: int = 1
    latency_threads: int | None = None
    tolerance: float = 0.1
    latency_feedback: int = 4
    fill_budget: bool | None = None
    cost_weight: float = 2.0
    cost_loss: str = "lagrangian"
    dual_lr: float = 1.0
    dual_penalty: float = 20.0
    sharp_temperature: float | None = 0.1
    sharp_value: str = "sharpened"
    decode: bool = True
    channel_order: str | None = None
    task_classes: list[int] | None = None
    limit_widths: bool = False
    epochs: int | float = 2
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 0.15
    arch_weight_decay: float = 1e-3
    arch_lr_schedule: str = "cosine"
    arch_lr_hold: float = 0.5
    entropy_weight: float = 3.0
    landing_steps: float = 0.5
    landing_lr: float = 0.5
    kd_alpha: float = 0.0
    arch_kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    arch_warmup: float = 0.0
    arch_steps: float = 1.0
    arch_draws: int = 1
    arch_ce_weight: float = 1.0
    selection: str = "prefix"
    block_size: int | None = None
    attn_lr: float = 0.01
    attn_weight_decay: float = 1e-4
    sapp_warmup: float = 0.2
    sapp_sparsify: float = 0.15
    sapp_sparse: float = 0.1
    sapp_dense: float = 0.1
    sapp_rounds: int = 2
    sapp_anneal: bool = False
    tau_max: float = 5.0
    tau_min: float = 0.1
    tau_schedule: str = "cosine"
    k: int | None = None
    output: str = "runs/search"
    amp: str | None = None
    channels_last: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "SearchConfig":
        return config_from_args(cls, args)

    def validate(self) -> None:
        if self.flops_ratio is None and self.params_ratio is None and self.latency_ratio is None:
            self.flops_ratio = 0.5
        if self.flops_ratio is not None and self.params_ratio is not None:
            raise TasError("give one of --flops-ratio and --params-ratio (a latency target may add one as a ceiling)")
        self.epochs = check_epochs(self.epochs)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TasError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if not 0 <= self.arch_warmup < 1:
            raise TasError(f"--arch-warmup must be a fraction of the search in [0, 1), got {self.arch_warmup}")
        if not self.arch_steps > 0:
            raise TasError(f"--arch-steps must be > 0 (architecture steps per weight step), got {self.arch_steps}")
        if not 0 <= self.kd_alpha <= 1 or not 0 <= self.arch_kd_alpha <= 1 or self.kd_temperature <= 0:
            raise TasError(f"--kd-alpha and --arch-kd-alpha must be in [0, 1] and --kd-temperature > 0, got "
                           f"{self.kd_alpha}, {self.arch_kd_alpha}, {self.kd_temperature}")
        if not isinstance(self.latency_feedback, int) or self.latency_feedback < 0:
            raise TasError(f"--latency-feedback must be a non-negative integer, got {self.latency_feedback!r}")
        if not 0 <= self.tolerance < 1:
            raise TasError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.arch_lr_schedule not in ARCH_LR_SCHEDULES:
            raise TasError(f"--arch-lr-schedule must be one of {', '.join(ARCH_LR_SCHEDULES)}, got {self.arch_lr_schedule!r}")
        if not 0 <= self.arch_lr_hold < 1:
            raise TasError(f"--arch-lr-hold must be a fraction of the search in [0, 1), got {self.arch_lr_hold}")
        if not isinstance(self.arch_draws, int) or not 1 <= self.arch_draws <= self.batch_size:
            raise TasError(f"--arch-draws must be an integer in [1, --batch-size], got {self.arch_draws!r}")
        if not self.arch_ce_weight >= 0:
            raise TasError(f"--arch-ce-weight must be >= 0, got {self.arch_ce_weight}")
        if not self.entropy_weight >= 0:
            raise TasError(f"--entropy-weight must be >= 0, got {self.entropy_weight}")
        if not self.landing_steps >= 0:
            raise TasError(f"--landing-steps must be >= 0 (a fraction of the search's architecture steps), "
                           f"got {self.landing_steps}")
        if not self.landing_lr > 0:
            raise TasError(f"--landing-lr must be > 0 (a fraction of --arch-lr), got {self.landing_lr}")
        if self.tau_min <= 0 or self.tau_max < self.tau_min:
            raise TasError("--tau-min must be > 0 and <= --tau-max")
        self.validate_run()
        check_amp(self.amp)
        if self.search_depth not in SEARCH_DEPTH:
            raise TasError(f"--search-depth must be one of {', '.join(SEARCH_DEPTH)}, got {self.search_depth!r}")
        if self.selection not in ("prefix", "sapp"):
            raise TasError(f"--selection must be prefix or sapp, got {self.selection!r}")
        if self.sharp_value not in SHARP_VALUES:
            # a config/API option without a CLI flag (measured, not kept: docs/benchmarks_search_sharp.md)
            raise TasError(f"sharp_value must be one of {', '.join(SHARP_VALUES)}, got {self.sharp_value!r}")
        if self.cost_loss not in COST_LOSSES:
            raise TasError(f"--cost-loss must be one of {', '.join(COST_LOSSES)}, got {self.cost_loss!r}")
        if self.channel_order is None:
            # measured for prefix selection; SA++ ranks blocks by its attention, and its resume state and
            # supernet.safetensors are then read against arch.json without the permutation
            self.channel_order = "l1" if self.selection == "prefix" else "none"
        if self.channel_order not in CRITERIA:
            raise TasError(f"--channel-order must be one of {', '.join(CRITERIA)}, got {self.channel_order!r}")
        if self.channel_order == "task" and not self.task_classes:
            raise TasError("--channel-order task needs --task-classes (the class ids of the task)")

    @property
    def metric(self) -> str:
        if self.latency_ratio is not None:
            return "latency"
        return "flops" if self.flops_ratio is not None else "params"

    @property
    def ratio(self) -> float:
        if self.latency_ratio is not None:
            return float(self.latency_ratio)
        return float(self.flops_ratio if self.flops_ratio is not None else self.params_ratio)

    @property
    def band(self) -> tuple[float, float]:
        """The accepted final cost ratio, ``[ratio·(1 − tolerance), ratio]`` (:func:`~tas.nas.cost.budget_band`)."""
        return budget_band(self.ratio, self.tolerance)

    @property
    def fill(self) -> bool:
        """Whether the final decode spends the budget up to the target: by default for a latency
        target (a number to hit), not for FLOPs or params (TAS's band: anywhere within tolerance)."""
        return self.metric == "latency" if self.fill_budget is None else bool(self.fill_budget)

    @property
    def ceiling(self) -> tuple[str, float] | None:
        """A FLOPs or params ceiling given beside a latency target."""
        if self.latency_ratio is None:
            return None
        if self.flops_ratio is not None:
            return ("flops", float(self.flops_ratio))
        return ("params", float(self.params_ratio)) if self.params_ratio is not None else None
