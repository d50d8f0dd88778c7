"""The bi-level TAS search: from a trained teacher to an architecture spec.

:func:`search` turns search.py's flags into a finished run directory::

    runs/search/
      arch.json            the final argmax architecture (tas.Arch)
      arch_history.json    the derived architecture after every epoch
      supernet.safetensors the supernet's weights and architecture logits
      model.safetensors    the slim network materialised from the supernet (loadable by tas.load_slim)
      config.json, metrics.json, state/, TensorBoard events

Each step takes a weight step on a batch of the ``train`` half (SGD on the shared weights and
per-candidate BNs, cross-entropy of the sampled supernet) and an architecture step on a batch of
the ``val`` half (Adam on α and β, cross-entropy + ``cost_weight`` × the TAS cost loss). τ anneals
over the whole search.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import distributed, engine
from .checkpoint import atomic_write_json, has_state, load_state, rng_state, save_state, save_weights, set_rng_state
from .cli import config_from_args, format_table
from .errors import CheckpointError, DivergedError, TasError
from .arch_step import ArchStepper
from .rundir import is_finished_run, load_run, run_lock, save_run
from .attention import PHASES, SappController, SappSchedule
from .sampling import tau_at
from .supernet import Supernet, create_supernet
from . import tb

__all__ = ["SearchConfig", "search", "ArchStepper", "SappController", "recalibrate_bn"]


@dataclass
class SearchConfig:
    """Every setting of a search; search.py's flags map one to one (dashes -> underscores)."""

    teacher: str | None = None
    model: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None
    augment: bool = True
    space: str | None = None
    flops_ratio: float | None = None
    params_ratio: float | None = None
    latency_ratio: float | None = None
    runtime: str = "ort-cpu"
    latency_batch: int = 1
    latency_threads: int | None = None
    tolerance: float = 0.05
    fill_budget: bool | None = None
    cost_weight: float = 2.0
    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 0.05
    arch_weight_decay: float = 1e-3
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
    seed: int = 0
    output: str = "runs/search"
    resume: bool = False
    overwrite: bool = False
    workers: int = 0
    device: str = "auto"
    limit: int | None = None
    log_every: int = 10
    checkpoint_every: int = 50
    nan_policy: str = "stop"
    progress: bool = True

    @classmethod
    def from_args(cls, args: Any) -> "SearchConfig":
        return config_from_args(cls, args)

    def validate(self) -> None:
        if self.flops_ratio is None and self.params_ratio is None and self.latency_ratio is None:
            self.flops_ratio = 0.5
        if self.flops_ratio is not None and self.params_ratio is not None:
            raise TasError("give one of --flops-ratio and --params-ratio (a latency target may add one as a ceiling)")
        for flag in ("epochs", "batch_size"):
            v = getattr(self, flag)
            if not isinstance(v, int) or v < 1:
                raise TasError(f"--{flag.replace('_', '-')} must be a positive integer, got {v!r}")
        if not 0 <= self.tolerance < 1:
            raise TasError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.tau_min <= 0 or self.tau_max < self.tau_min:
            raise TasError("--tau-min must be > 0 and <= --tau-max")
        if self.resume and self.overwrite:
            raise TasError("--resume and --overwrite exclude each other")
        if self.nan_policy not in ("stop", "skip"):
            raise TasError(f"--nan-policy must be stop or skip, got {self.nan_policy!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise TasError(f"--checkpoint-every must be a non-negative integer, got {self.checkpoint_every!r}")
        if self.selection not in ("prefix", "sapp"):
            raise TasError(f"--selection must be prefix or sapp, got {self.selection!r}")

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


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: Any, device: torch.device | str, batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics of ``model``'s current (hard-mode) network.

    In search mode every per-candidate BN sees interpolated mixtures, so its running statistics do
    not describe the single architecture hard mode computes; a few forward passes fix that before
    it is evaluated or materialised (standard in one-shot NAS).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
    model.train(was_training)
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum


def _ratio(arch: Any, metric: str, latency: Any) -> float:
    """The architecture's cost as a fraction of the original, in the search's budget metric."""
    if metric == "latency":
        return latency.exact_arch(arch) / latency.full()
    return getattr(arch, f"{metric}_ratio")


def _shared_latency_table(supernet: Supernet, cfg: SearchConfig) -> Any:
    """The supernet's latency table (cached or measured), measured by rank 0 alone (ranks timing
    side by side would disturb each other) and sent to the others."""
    from .latency import LatencyTable, load_or_build

    main = distributed.is_main()
    table = load_or_build(supernet, runtime=cfg.runtime, batch=cfg.latency_batch,
                          threads=cfg.latency_threads or torch.get_num_threads(), progress=cfg.progress) if main else None
    if distributed.is_active():
        table = LatencyTable.from_dict(distributed.broadcast_object(table.to_dict() if main else None))
    return table


def load_teacher_and_data(cfg: Any) -> tuple[torch.nn.Module, dict, Any]:
    """The teacher, its config, and the dataset info at its input size; refuses a dataset whose
    classes or channels do not fit the teacher."""
    from .data import dataset_info

    teacher, tconfig = load_teacher(cfg)
    info = dataset_info(cfg.dataset, cfg.data_dir, cfg.img_size or tconfig["input_size"][1])
    kwargs = tconfig["model_kwargs"]
    if info.num_classes != kwargs["num_classes"] or info.in_chans != kwargs["in_chans"]:
        raise TasError(f"the teacher in {cfg.teacher} has {kwargs['num_classes']} classes and {kwargs['in_chans']} "
                       f"input channels; {cfg.dataset} has {info.num_classes} and {info.in_chans}")
    return teacher, tconfig, info


def load_teacher(cfg: Any) -> tuple[torch.nn.Module, dict]:
    """The trained network of ``cfg.teacher`` and its config; refuses pruned or mismatching runs."""
    if not cfg.teacher:
        raise TasError("--teacher: give the run directory of the trained network to prune (train.py --output)")
    model, config = load_run(cfg.teacher)
    if "arch" in config:
        raise TasError(f"--teacher {cfg.teacher} is already a pruned network; give the original's run")
    if cfg.model and cfg.model != config["model"]:
        raise TasError(f"--model {cfg.model} does not match the teacher in {cfg.teacher} ({config['model']})")
    return model, config


def search(args: Any) -> dict[str, Any]:
    """Run the search search.py's flags describe; returns the final metrics and the arch.

    Under ``torchrun`` every rank runs this; see :mod:`tas.distributed` for what is shared.
    Only rank 0 writes the run directory.
    """
    cfg = SearchConfig.from_args(args)
    with distributed.session(cfg.device) as device, run_lock(cfg.output, enabled=distributed.is_main()):
        return _search(cfg, device)


def _search(cfg: SearchConfig, device: torch.device) -> dict[str, Any]:
    from .data import create_loaders
    from .materialize import materialize
    from .training import seed_everything

    out = Path(cfg.output)
    if cfg.resume and not has_state(out):
        raise CheckpointError(f"--resume: no resumable state in {out}")
    if not cfg.resume and not cfg.overwrite and (is_finished_run(out) or has_state(out)):
        raise TasError(f"{out} already holds a search; pass --resume, --overwrite or another --output")
    state = load_state(out) if cfg.resume else None
    teacher, tconfig, info = load_teacher_and_data(cfg)
    seed_everything(cfg.seed)
    main = distributed.is_main()
    input_size = (info.in_chans, info.img_size, info.img_size)
    def build(space: Any) -> Supernet:
        seed_everything(cfg.seed)  # the same α/β initialisation however often it is built
        net = create_supernet(teacher, space, input_size=input_size, model_name=tconfig["model"],
                              model_kwargs=tconfig["model_kwargs"], selection=cfg.selection,
                              block_size=cfg.block_size)
        if cfg.k is not None:
            net.k = cfg.k
        return net

    supernet = build(cfg.space)
    latency = None
    if cfg.metric == "latency" or supernet.space.divisor == "auto":
        latency = _shared_latency_table(supernet, cfg)
        if supernet.space.divisor == "auto":
            from .latency import aligned_candidates

            if state is not None and "aligned_widths" in state:  # a re-measured table must not change them
                widths = json.loads(state["aligned_widths"])
            else:
                widths = aligned_candidates(latency, {n: g.widths for n, g in supernet.groups().items()})
            dropped = sum(len(g.widths) - len(widths[n]) for n, g in supernet.groups().items())
            print(f"divisor auto: the latency table drops {dropped} candidate widths no faster than a wider one")
            supernet = build(dataclasses.replace(supernet.space, widths=widths))
    if cfg.metric == "latency":
        latency.check_target(supernet, cfg.ratio)
        if cfg.ceiling:
            supernet.check_target(*cfg.ceiling)
    else:
        supernet.check_target(cfg.metric, cfg.ratio)
    supernet.to(device)
    # The Gumbel draws: a stream of their own, seeded alike on every rank, so all ranks sample the
    # same fragments whatever else consumes random numbers (augmentation, dropout).
    supernet.generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loaders = create_loaders(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, workers=cfg.workers,
                             seed=cfg.seed, download=cfg.download, img_size=info.img_size, search_split=True,
                             limit=cfg.limit, distributed=True, augment=cfg.augment)
    w_opt = torch.optim.SGD(list(supernet.weight_parameters()), lr=cfg.lr, momentum=cfg.momentum,
                            nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(loaders["train"])
    total_steps = cfg.epochs * steps_per_epoch
    w_sched = torch.optim.lr_scheduler.LambdaLR(w_opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    stepper = ArchStepper(supernet, cfg.metric, cfg.ratio, cfg.tolerance, cfg.cost_weight, cfg.arch_lr,
                          cfg.arch_weight_decay, latency=latency, ceiling=cfg.ceiling, fill=cfg.fill)
    sapp = None
    attn_params = list(supernet.attention_parameters())
    step_params = [p for group in w_opt.param_groups for p in group["params"]] + attn_params
    grad_params = [p for p in step_params if p.requires_grad]
    attn_opt = torch.optim.Adam(attn_params, lr=cfg.attn_lr, weight_decay=cfg.attn_weight_decay) if attn_params else None
    if attn_opt is not None:
        try:
            schedule = SappSchedule(total_steps, cfg.sapp_warmup, cfg.sapp_sparsify, cfg.sapp_sparse, cfg.sapp_dense,
                                    cfg.sapp_rounds)
        except ValueError as e:
            raise TasError(f"--sapp-* phase lengths: {e}") from None
        sapp = SappController(supernet, schedule, [w_opt, attn_opt], anneal=cfg.sapp_anneal,
                              widths=lambda: stepper.decode()[0])

    start_epoch, step, wall, history, start_in_epoch, skipped = 0, 0, 0.0, [], 0, 0
    if state is not None:
        try:
            supernet.load_state_dict(state["supernet"])
            w_opt.load_state_dict(state["w_opt"])
            stepper.optimizer.load_state_dict(state["a_opt"])
            if attn_opt is not None:
                attn_opt.load_state_dict(state["attn_opt"])
                sapp.phase_index = sapp.schedule.phase(int(state["step"]) - 1)[0] if int(state["step"]) else None
            w_sched.load_state_dict(state["w_sched"])
            start_epoch, step, wall = int(state["epoch"]), int(state["step"]), float(state["wall_time_s"])
            start_in_epoch, skipped = int(state.get("step_in_epoch", 0)), int(state.get("skipped_steps", 0))
            history = json.loads(state["history"])
            rng = state["rng"]
            if "gumbel_rng" in state:  # states written before the Gumbel draws had their own stream
                supernet.generator.set_state(state["gumbel_rng"].cpu())
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"--resume: the state in {out} does not fit this search ({e})") from None
        print(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}, step {start_in_epoch + 1}")

    def snapshot(epoch_done: int, step_in_epoch: int, seconds: float) -> None:
        if not main:
            return
        save_state(out, {"supernet": supernet.state_dict(), "w_opt": w_opt.state_dict(),
                         "a_opt": stepper.optimizer.state_dict(), "w_sched": w_sched.state_dict(),
                         **({"attn_opt": attn_opt.state_dict()} if attn_opt is not None else {}),
                         "epoch": epoch_done, "step": step, "step_in_epoch": step_in_epoch,
                         "skipped_steps": skipped, "wall_time_s": seconds,
                         "history": json.dumps(history), "rng": rng_state(),
                         "gumbel_rng": supernet.generator.get_state(),
                         **({"aligned_widths": json.dumps(supernet.space.widths)}
                            if supernet.space.divisor == "auto" else {})})

    def check_finite(epoch: int, in_epoch: int) -> None:
        for name, p in [*((f"width logits of {n}", g.alpha) for n, g in supernet.groups().items()),
                        *((f"depth logits of {n}", b) for n, b in supernet.betas.items())]:
            if p is not None and not torch.isfinite(p).all():
                raise DivergedError(f"{name} became non-finite at epoch {epoch + 1}, step {in_epoch + 1}; "
                                    "the last good checkpoint is kept")

    distributed.barrier()  # every rank has checked --output before rank 0 writes to it
    writer = tb.create_writer(out, purge_step=step + 1 if cfg.resume else None)
    writer.add_custom_scalars(tb.runs.SEARCH_LAYOUT)
    print(f"searching {tconfig['model']} on {cfg.dataset}: target {cfg.metric} ratio {cfg.ratio} "
          f"(±{cfg.tolerance} below{', decoded up to the target' if cfg.fill else ''}), {sum(p.numel() for p in supernet.arch_parameters())} architecture logits")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            skip = start_in_epoch if epoch == start_epoch else 0
            for name in ("train", "val"):
                loader = loaders[name]
                gen = getattr(loader, "generator", None)
                if gen is not None:
                    gen.manual_seed(cfg.seed * 1000 + epoch + (0 if name == "train" else 500))
            # The val half is cycled to the train half's length; both start at the resume point.
            batches = zip(engine.skip_batches(loaders["train"], skip),
                          engine.skip_batches(loaders["val"], skip, length=steps_per_epoch))
            if cfg.resume and epoch == start_epoch:
                set_rng_state(rng)  # after fixing the epoch's batch order, as when it was saved
            supernet.search().train()
            bar = engine._progress(batches, cfg.progress, total=steps_per_epoch - skip, desc=f"search {epoch + 1}")
            for in_epoch, ((xt, yt), (xv, yv)) in enumerate(bar, start=skip):
                xt, yt, xv, yv = xt.to(device), yt.to(device), xv.to(device), yv.to(device)
                supernet.tau = tau_at(step / max(1, total_steps - 1), cfg.tau_max, cfg.tau_min, cfg.tau_schedule)
                if sapp is not None:
                    phase, sparsity = sapp.step(step)
                w_loss = F.cross_entropy(supernet(xt), yt)
                w_opt.zero_grad(set_to_none=True)
                if attn_opt is not None:
                    attn_opt.zero_grad(set_to_none=True)
                # Only what this step updates: the Gumbel weights' and α/β's gradients would be
                # thrown away by the arch step's zero_grad.
                (w_loss * distributed.loss_scale(yt.numel())).backward(inputs=grad_params)
                n, (w_sum,) = distributed.reduce_gradients(step_params, yt.numel(), [w_loss.item() * yt.numel()])
                w_value = w_sum / max(n, 1)
                try:
                    if not math.isfinite(w_value):
                        raise DivergedError(f"weight loss (CE of the sampled supernet) is {w_value}")
                    w_opt.step()
                    if attn_opt is not None:
                        attn_opt.step()
                    terms = stepper.step(xv, yv)
                except DivergedError as e:
                    where = f"epoch {epoch + 1}, step {in_epoch + 1}"
                    if cfg.nan_policy != "skip":
                        raise DivergedError(f"search diverged at {where}: {e}; the last good checkpoint is "
                                            "kept (lower --lr / --arch-lr, or pass --nan-policy skip)") from None
                    skipped += 1
                    print(f"warning: {e} at {where}; step skipped (--nan-policy skip)", flush=True)
                    terms = None
                w_sched.step()
                check_finite(epoch, in_epoch)
                step += 1
                if terms is not None and (step % cfg.log_every == 0 or step == total_steps):
                    writer.add_scalar("search/weight_loss", w_value, step)
                    for k, v in terms.items():
                        writer.add_scalar(f"search/{k}", v, step)
                    writer.add_scalar("search/target_ratio", cfg.ratio, step)
                    writer.add_scalar("search/tau", supernet.tau, step)
                    writer.add_scalar("search/lr", w_opt.param_groups[0]["lr"], step)
                    if sapp is not None:
                        writer.add_scalar("sapp/phase", PHASES.index(phase), step)
                        writer.add_scalar("sapp/sparsity", sparsity, step)
                if terms is not None:
                    bar.set_postfix(loss=f"{w_value:.3f}", ratio=f"{terms['derived_ratio']:.3f}", refresh=False)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and in_epoch + 1 < steps_per_epoch:
                    snapshot(epoch, in_epoch + 1, wall + time.perf_counter() - t0)
            arch = supernet.derive_arch(epoch=epoch + 1)
            supernet.set_arch(arch)
            recalibrate_bn(supernet, loaders["train"], device)
            val = engine.evaluate(supernet, loaders["test"], device)
            supernet.search()
            tb.log_search_epoch(writer, supernet, arch, val["top1"], step)
            wall += time.perf_counter() - t0
            history.append({"epoch": epoch + 1, "flops_ratio": arch.flops_ratio, "params_ratio": arch.params_ratio,
                            "top1": val["top1"], "tau": supernet.tau, "widths": arch.widths, "depths": arch.depths})
            print(f"epoch {epoch + 1}/{cfg.epochs}  derived {cfg.metric} ratio {_ratio(arch, cfg.metric, latency):.3f}"
                  f"  hard-mode test top-1 {val['top1']:.2f}%  tau {supernet.tau:.2f}", flush=True)
            snapshot(epoch + 1, 0, wall)
    finally:
        writer.flush()  # closed once the decoded architecture is logged too

    pre_decode_ratio = stepper.current_cost() / stepper.full
    # SA++: widths within the last phase's masks, then the masks become exactly the kept blocks
    widths, depths, projection_steps = stepper.decode(caps=sapp.caps() if sapp is not None else None)
    arch = supernet.make_arch(widths, depths, meta=dict(
        epochs=cfg.epochs, projection_steps=projection_steps, metric=cfg.metric, target_ratio=cfg.ratio,
        tolerance=cfg.tolerance, fill_budget=cfg.fill, seed=cfg.seed, dataset=cfg.dataset, teacher=str(cfg.teacher),
        space=supernet.space.to_dict()))
    if sapp is not None:
        sapp.finalize(arch)
    within = stepper.within(widths, depths)
    supernet.set_arch(arch)
    recalibrate_bn(supernet, loaders["train"], device)
    val = engine.evaluate(supernet, loaders["test"], device)
    slim = materialize(supernet, arch).cpu()
    supernet.search()
    metrics = {"top1_hard_mode": val["top1"], "flops": arch.flops, "params": arch.params,
               "flops_ratio": arch.flops_ratio, "params_ratio": arch.params_ratio, "target_metric": cfg.metric,
               "target_ratio": cfg.ratio, "within_tolerance": within, "wall_time_s": round(wall, 3),
               "epochs": cfg.epochs, "steps": step, "projection_steps": projection_steps,
               "pre_decode_ratio": pre_decode_ratio,
               "skipped_steps": skipped}
    if distributed.is_active():
        # Checked, not assumed: every rank must end with rank 0's architecture (and SA++) logits.
        metrics.update(world_size=distributed.world_size(), rank_divergence=distributed.max_divergence(
            [*supernet.arch_parameters(), *supernet.attention_parameters()]))
    if not main:
        return {**metrics, "arch": arch, "run_dir": str(out)}
    if cfg.metric == "latency":
        from .latency import check_prediction

        metrics.update(check_prediction(latency, slim, teacher, arch, cfg.latency_batch,
                                        cfg.latency_threads or torch.get_num_threads()))
    arch.to_json(out / "arch.json")
    atomic_write_json(out / "arch_history.json", history)
    save_weights(out / "supernet.safetensors", supernet.state_dict())
    save_run(out, slim, model_name=arch.model, model_kwargs=arch.model_kwargs, input_size=arch.input_size,
             metrics=metrics, extra_config={"stage": "search", "arch": arch.to_dict(), "dataset": cfg.dataset,
                                            "data": {"img_size": info.img_size, "mean": list(info.mean),
                                                     "std": list(info.std)},
                                            "search": dataclasses.asdict(cfg)})
    try:  # the decoded architecture is the final step, one past the last search step
        tb.log_search_end(writer, supernet, arch, slim, step + 1)
        tb.log_session(writer, tb.runs.search_hparams(cfg, arch, supernet.k),
                       tb.runs.search_results(metrics), step + 1)
    finally:
        writer.close()
    rows = arch.summary_rows()
    print(format_table(rows, header=["group / stage", "original", "chosen"]))
    summary = [
        ["FLOPs (MACs)", f"{arch.full_flops:,}", f"{arch.flops:,} ({arch.flops_ratio:.3f})"],
        ["params", f"{arch.full_params:,}", f"{arch.params:,} ({arch.params_ratio:.3f})"],
        [f"target {cfg.metric} ratio", "", f"{cfg.ratio} (tolerance {cfg.tolerance}{', filled' if cfg.fill else ''}): "
                                            f"{'met' if within else 'MISSED'}"],
        *([["latency (ms, predicted / measured)",
            f"{metrics['predicted_full_latency_ms']:.3f} / {metrics['full_latency_ms']:.3f}",
            f"{metrics['predicted_latency_ms']:.3f} / {metrics['measured_latency_ms']:.3f} "
            f"(ratio {metrics['measured_latency_ratio']:.3f}, predicted {metrics['predicted_latency_ratio']:.3f}; "
            f"error {metrics['prediction_error']:+.1%} in ms, {metrics['ratio_prediction_error']:+.1%} as a ratio)"],
           ["latency, steady state (ms)", f"{metrics['steady_full_latency_ms']:.3f}",
            f"{metrics['steady_latency_ms']:.3f} (ratio {metrics['steady_latency_ratio']:.3f})"]]
          if cfg.metric == "latency" else []),
        ["hard-mode test top-1", "", f"{val['top1']:.2f}%"],
        ["wall time", "", f"{wall:.1f} s"],
        ["arch", "", str(out / "arch.json")],
    ]
    print(format_table(summary, header=["search", "original", "result"]))
    print(f"TensorBoard: tensorboard --logdir {out}")
    return {**metrics, "arch": arch, "run_dir": str(out)}
