"""The bi-level TAS search: from a trained teacher to an architecture spec.

One code path, two ways in. :class:`Searcher` searches a teacher network over three loaders
(``train`` for the weights, ``val`` for the architecture, ``test`` for the per-epoch report) in
phases -- ``prepare`` (resume state, supernet), ``budget`` (latency table, target check, the
architecture stepper), ``loop`` (the epochs), ``land`` (architecture steps past the end while the argmax
is outside the band), ``decode`` (the final architecture, its slim network and metrics), ``save`` (the
run directory). :func:`tas.search` hands it the user's model and
loaders; :func:`tas.nas.run.search` (search.py, ``tas search``) first reads the teacher run and builds the
loaders of ``--dataset``. Given an output directory, both write the same run::

    runs/search/
      arch.json            the final argmax architecture (tas.Arch)
      arch_history.json    the derived architecture after every epoch
      supernet.safetensors the supernet's weights and architecture logits
      model.safetensors    the slim network materialised from the supernet (loadable by tas.load_slim)
      config.json, metrics.json, state/, TensorBoard events

Each step takes a weight step on a batch of the ``train`` half (SGD on the shared weights and
per-candidate BNs, cross-entropy of the sampled supernet) and ``arch_steps`` architecture steps
on batches of the ``val`` half (Adam on α and β, cross-entropy + the budget term; a fraction
such as 0.5 means one after every second weight step), none during the first ``arch_warmup`` of
the search. τ anneals over the whole search.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import distributed, tb
from ..cli import format_table
from ..deploy import latency
from ..errors import DivergedError, TasError
from ..io.checkpoint import atomic_write_json, load_state, save_weights
from ..io.rundir import save_run
from ..prune.channel_order import order_teacher, to_original
from ..prune.materialize import materialize
from ..train import engine
from ..train.amp import Precision
from ..train.distill import distillation_loss
from ..train.loop import seed_everything
from .arch_step import ArchStepper
from .attention import PHASES, SappController, SappSchedule
from .calibrate import recalibrate_bn
from .config import SearchConfig
from .narrow import align_widths, bound_widths, choose_depth
from .latency_budget import budget_ratio, landed_within, measured_landing, shared_latency_table
from .progress import Progress, arch_quota, check_output, cycle_batches, lr_factor
from .result import SearchData, SearchResult, summary_rows
from .resume import restore_search_state, resume_rng, save_search_state
from .sampling import tau_at
from .supernet import Supernet, create_supernet

__all__ = ["SearchData", "SearchResult", "Searcher", "check_output", "recalibrate_bn"]


class Searcher:
    """The bi-level search of ``teacher`` (not modified) over ``data`` with the settings ``cfg``.

    :meth:`run` goes through the phases in order; each is a method, so a caller (a benchmark, a
    test) can run them one by one. With ``output=None`` the resumable state and TensorBoard events go
    to a temporary directory that :meth:`run` removes, and nothing else is written.

    Args:
        cfg: the settings (data-loading fields are ignored: ``data`` is given).
        teacher: the trained network of a supported family.
        data: the loaders and their description.
        device: where the supernet runs.
        model_name, model_kwargs: how timm recreates the teacher (default: read from the model).
        teacher_source: where the teacher came from, recorded in ``arch.json`` (a run directory).
        output: the run directory, or ``None``.
    """

    def __init__(self, cfg: SearchConfig, teacher: torch.nn.Module, data: SearchData, device: torch.device, *,
                 model_name: str | None = None, model_kwargs: dict | None = None,
                 teacher_source: str | None = None, output: str | Path | None = None) -> None:
        self.cfg, self.teacher, self.data, self.device = cfg, teacher, data, device
        self.model_name, self.model_kwargs, self.teacher_source = model_name, model_kwargs, teacher_source
        self.output = Path(output) if output is not None else None
        self.out = self.output  # where state and events go (a temporary directory without output)
        self.main = distributed.is_main()
        self.progress = Progress()
        self.state: dict[str, Any] | None = None
        self.latency: Any = None
        self.writer: Any = None
        self.weight_loss: engine.LossFn = engine.cross_entropy_loss()
        self.arch_loss: engine.LossFn = engine.cross_entropy_loss()
        self.landing_steps = 0

    def run(self) -> SearchResult:
        """prepare → budget → loop → land → decode → save (with an output directory) → report; the
        finished :class:`SearchResult`."""
        with tempfile.TemporaryDirectory(prefix="tas-search-") if self.output is None else nullcontext() as tmp:
            if tmp is not None:
                self.out = Path(tmp)
            # the TensorBoard logs of a run this one replaces (--overwrite), dropped once it is saved
            stale = ([] if self.cfg.resume or not self.main or self.output is None
                     else sorted(self.output.glob("events.out.tfevents.*")))
            self.prepare()
            self.budget()
            try:
                self.loop()
                self.land()
                result = self.decode()
                if self.main:
                    if self.output is not None:
                        self.save(result)
                        for old in stale:
                            old.unlink(missing_ok=True)
                    self.report(result)
            finally:
                if self.writer is not None:
                    self.writer.close()
        return result

    # -- prepare: resume state, supernet ---------------------------------------------------------
    def prepare(self) -> None:
        """Read the resumable state (``--resume``), build the supernet (seeded), measure the latency
        table where the budget or ``divisor: auto`` needs it, and place the Gumbel stream."""
        cfg = self.cfg
        if self.output is not None:
            check_output(dataclasses.replace(cfg, output=str(self.output)))
        elif cfg.resume:
            raise TasError("resume needs an output directory to resume from")
        self.state = load_state(self.out) if cfg.resume else None
        # The teacher's channels by importance, on a copy (a resumed search re-applies its saved order).
        self.ordered = copy.deepcopy(self.teacher).to(self.device)
        self.perms = order_teacher(self.ordered, cfg.channel_order, self.data.train,
                                   saved=self._saved("channel_perms"), task_classes=cfg.task_classes)
        self.ordered.cpu()
        # --kd-alpha / --arch-kd-alpha: the weight / architecture step distils from a frozen copy of the
        # teacher (the supernet takes over self.ordered)
        kd_teacher = copy.deepcopy(self.teacher).to(self.device) if cfg.kd_alpha or cfg.arch_kd_alpha else None
        self.weight_loss, self.arch_loss = (distillation_loss(kd_teacher, a, cfg.kd_temperature) if a
                                            else engine.cross_entropy_loss() for a in (cfg.kd_alpha, cfg.arch_kd_alpha))
        self.supernet = choose_depth(self._build(cfg.space), self._build, cfg.search_depth, cfg.metric, cfg.ratio)
        if cfg.metric == "latency" or self.supernet.space.divisor == "auto":
            self.latency = shared_latency_table(self.supernet, cfg)
        if self.supernet.space.divisor == "auto":  # (resumed: the saved choice; a re-measured table must not change it)
            self.supernet = align_widths(self.supernet, self._build, self.latency, self._saved("aligned_widths"))
        if cfg.limit_widths:
            self.supernet = bound_widths(self.supernet, self._build, self.ordered, self.data.train,
                                         self._saved("bounded_widths"))
        self.supernet.to(self.device)
        self.precision = Precision(cfg.amp, self.device, cfg.channels_last)
        self.precision.model(self.supernet)
        # The Gumbel draws: a stream of their own, seeded alike on every rank, so all ranks sample the
        # same fragments whatever else consumes random numbers (augmentation, dropout).
        self.supernet.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)

    def _saved(self, key: str) -> Any:
        """A JSON value of the resumed search's state (None when not resuming or not saved)."""
        return json.loads(self.state[key]) if self.state is not None and key in self.state else None

    def _build(self, space: Any) -> Supernet:
        seed_everything(self.cfg.seed)  # the same α/β initialisation however often it is built
        net = create_supernet(self.ordered, space, input_size=self.data.input_size, model_name=self.model_name,
                              model_kwargs=self.model_kwargs, selection=self.cfg.selection,
                              block_size=self.cfg.block_size)
        if self.cfg.k is not None:
            net.k = self.cfg.k
        return net

    # -- budget: the target and the architecture step ----------------------------------------------
    def budget(self) -> None:
        """Refuse an unreachable target (naming the smallest reachable one); build the :class:`ArchStepper`."""
        cfg, net = self.cfg, self.supernet
        if cfg.metric == "latency":
            self.latency.check_target(net, cfg.ratio)
            if cfg.ceiling:
                net.check_target(*cfg.ceiling)
        else:
            net.check_target(cfg.metric, cfg.ratio)
        self.stepper = ArchStepper.from_config(net, cfg, latency=self.latency, loss_fn=self.arch_loss,
                                               precision=self.precision)

    # -- loop: the epochs ------------------------------------------------------------------------
    def _optimizers(self) -> None:
        """The weight step's SGD and cosine schedule, and SA++'s attention Adam and phase controller."""
        cfg, net = self.cfg, self.supernet
        self.steps_per_epoch = len(self.data.train)
        self.epoch_lengths = engine.epoch_lengths(cfg.epochs, self.steps_per_epoch)  # a fraction: a shorter last one
        self.total_steps = sum(self.epoch_lengths)
        self.warmup_steps = round(cfg.arch_warmup * self.total_steps)
        self.w_opt = torch.optim.SGD(list(net.weight_parameters()), lr=cfg.lr, momentum=cfg.momentum,
                                     nesterov=True, weight_decay=cfg.weight_decay)
        self.w_sched = torch.optim.lr_scheduler.LambdaLR(self.w_opt, lr_factor(self.total_steps))
        attn_params = list(net.attention_parameters())
        self.step_params = [p for group in self.w_opt.param_groups for p in group["params"]] + attn_params
        self.grad_params = [p for p in self.step_params if p.requires_grad]
        self.attn_opt = (torch.optim.Adam(attn_params, lr=cfg.attn_lr, weight_decay=cfg.attn_weight_decay)
                         if attn_params else None)
        self.sapp = None
        if self.attn_opt is not None:
            try:
                schedule = SappSchedule(self.total_steps, cfg.sapp_warmup, cfg.sapp_sparsify, cfg.sapp_sparse,
                                        cfg.sapp_dense, cfg.sapp_rounds)
            except ValueError as e:
                raise TasError(f"--sapp-* phase lengths: {e}") from None
            self.sapp = SappController(net, schedule, [self.w_opt, self.attn_opt], anneal=cfg.sapp_anneal,
                                       widths=lambda: self.stepper.decode()[0])

    def _check_finite(self, epoch: int, in_epoch: int) -> None:
        net = self.supernet
        for name, p in [*((f"width logits of {n}", g.alpha) for n, g in net.groups().items()),
                        *((f"depth logits of {n}", b) for n, b in net.betas.items())]:
            if p is not None and not torch.isfinite(p).all():
                raise DivergedError(f"{name} became non-finite at epoch {epoch + 1}, step {in_epoch + 1}; "
                                    "the last good checkpoint is kept")

    def loop(self) -> None:
        """Every epoch from the resume point: weight and architecture steps, then the derived
        architecture's hard-mode test top-1, TensorBoard, the history and the resumable state."""
        cfg = self.cfg
        self._optimizers()
        if self.state is not None:
            restore_search_state(self)
        distributed.barrier()  # every rank has checked the output before rank 0 writes to it
        self.writer = tb.create_writer(self.out, purge_step=self.progress.step + 1 if cfg.resume else None)
        self.writer.add_custom_scalars(tb.runs.SEARCH_LAYOUT)
        print(f"searching {self.supernet.model_name} on {self.data.name}: target {cfg.metric} ratio {cfg.ratio} "
              f"(band {cfg.band[0]:.3g}-{cfg.ratio}{', decoded up to the target' if cfg.fill else ''}), "
              f"{sum(p.numel() for p in self.supernet.arch_parameters())} architecture logits")
        try:
            for epoch in range(self.progress.epoch, len(self.epoch_lengths)):
                self._epoch(epoch)
            resume_rng(self.progress)  # resumed after its last epoch: the landing steps and the decode draw as they would have
        finally:
            self.writer.flush()  # closed by run() once the decoded architecture is logged too

    def land(self) -> None:
        """``--landing-steps``: architecture steps past the search's end while its argmax lies
        outside the band (:meth:`ArchStepper.land`), on val batches in an order fixed by the seed.
        Not checkpointed: a resumed search repeats them from its last epoch's state."""
        cfg, p, amp, dev = self.cfg, self.progress, self.precision, self.device
        max_steps = round(cfg.landing_steps * arch_quota(self.total_steps - self.warmup_steps, cfg.arch_steps))
        if not max_steps or self.stepper.within():  # nothing drawn: the same run as without landing
            return
        gen = getattr(self.data.val, "generator", None)
        if gen is not None:
            gen.manual_seed(cfg.seed * 1000 + 999)
        t0 = time.perf_counter()
        self.supernet.search().train()
        batches = ((amp.images(x, dev), amp.images(y, dev)) for x, y in cycle_batches(self.data.val))
        for i, terms in enumerate(self.stepper.land(batches, max_steps, cfg.arch_lr * cfg.landing_lr)):
            for k, v in terms.items():
                self.writer.add_scalar(f"search/{k}", v, p.step + i + 1)
            self.landing_steps = i + 1
        p.wall += time.perf_counter() - t0
        if self.landing_steps:
            print(f"landing: {self.landing_steps} architecture step(s) past the search "
                  f"(argmax {self.cfg.metric} ratio {self.stepper.current_cost() / self.stepper.full:.3f})")

    def _epoch_batches(self, epoch: int, skip: int) -> Iterable:
        """The epoch's ``(train batch, [val batches])`` from step ``skip`` on, their order fixed by
        ``(seed, epoch)``: step ``i`` gets the val batches of its :func:`arch_quota` share."""
        cfg, data = self.cfg, self.data
        for loader, offset in ((data.train, 0), (data.val, 500)):
            gen = getattr(loader, "generator", None)
            if gen is not None:
                gen.manual_seed(cfg.seed * 1000 + epoch + offset)
        # The val half is cycled to the epoch's architecture steps; both start at the resume point.
        train = engine.skip_batches(data.train, skip)
        val = cycle_batches(engine.skip_batches(data.val, arch_quota(skip, cfg.arch_steps),
                                         length=arch_quota(self.steps_per_epoch, cfg.arch_steps)))
        resume_rng(self.progress)  # after fixing the epoch's batch order, as when the state was saved
        quota = [arch_quota(i, cfg.arch_steps) for i in range(skip, self.epoch_lengths[epoch] + 1)]
        # The quota first: a shorter last epoch stops before loading a batch it would not use.
        return ((batch, [next(val) for _ in range(n1 - n0)]) for n0, n1, batch in zip(quota, quota[1:], train))

    def _epoch(self, epoch: int) -> None:
        cfg, net, p = self.cfg, self.supernet, self.progress
        t0 = time.perf_counter()
        skip = p.in_epoch if epoch == p.epoch else 0
        batches = self._epoch_batches(epoch, skip)
        net.search().train()
        length = self.epoch_lengths[epoch]
        bar = engine.progress_bar(batches, cfg.progress, total=length - skip, desc=f"search {epoch + 1}")
        for in_epoch, ((xt, yt), val) in enumerate(bar, start=skip):
            terms, w_value = self._step(epoch, in_epoch, xt, yt, val)
            if terms:
                bar.set_postfix(loss=f"{w_value:.3f}", ratio=f"{terms['derived_ratio']:.3f}", refresh=False)
            if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0 and in_epoch + 1 < length:
                save_search_state(self, epoch, in_epoch + 1, p.wall + time.perf_counter() - t0)
        self._end_epoch(epoch, t0)

    def tau_at_step(self, step: int) -> float:
        """The Gumbel temperature of step ``step`` (``--tau-max`` to ``--tau-min`` over the search)."""
        cfg = self.cfg
        return tau_at(step / max(1, self.total_steps - 1), cfg.tau_max, cfg.tau_min, cfg.tau_schedule)

    def _step(self, epoch: int, in_epoch: int, xt: torch.Tensor, yt: torch.Tensor,
              val: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, float] | None, float]:
        """One weight step on ``(xt, yt)``, then an architecture step on each val batch in ``val``
        (none during the ``arch_warmup``); returns the last architecture step's loss terms (empty
        when none was taken, ``None`` for a skipped step) and the weight loss."""
        cfg, net, p, dev, amp = self.cfg, self.supernet, self.progress, self.device, self.precision
        xt, yt = amp.images(xt, dev), amp.images(yt, dev)
        if p.step < self.warmup_steps:
            val = []  # drawn all the same: the val order stays that of the run without warm-up
        net.tau = self.tau_at_step(p.step)
        phase = sparsity = None
        if self.sapp is not None:
            phase, sparsity = self.sapp.step(p.step)
        with amp.autocast():  # CE, or with --kd-alpha the teacher's soft targets too
            w_loss = self.weight_loss(net, xt, yt)[0]
        self.w_opt.zero_grad(set_to_none=True)
        if self.attn_opt is not None:
            self.attn_opt.zero_grad(set_to_none=True)
        # Only what this step updates: the Gumbel weights' and α/β's gradients would be
        # thrown away by the arch step's zero_grad.
        amp.backward(w_loss * distributed.loss_scale(yt.numel()), inputs=self.grad_params)
        n, (w_sum,) = distributed.reduce_gradients(self.step_params, yt.numel(), [w_loss.item() * yt.numel()])
        w_value = w_sum / max(n, 1)
        try:
            if not math.isfinite(w_value):
                raise DivergedError(f"weight loss (CE of the sampled supernet) is {w_value}")
            amp.step(self.w_opt)
            if self.attn_opt is not None:
                amp.step(self.attn_opt)
            amp.update()
            terms = {}
            self.stepper.progress = p.step / max(1, self.total_steps - 1)
            for xv, yv in val:
                terms = self.stepper.step(amp.images(xv, dev), amp.images(yv, dev))
                amp.update()  # after every step: fp16's GradScaler refuses a second step before an update
        except DivergedError as e:
            where = f"epoch {epoch + 1}, step {in_epoch + 1}"
            if cfg.nan_policy != "skip":
                raise DivergedError(f"search diverged at {where}: {e}; the last good checkpoint is "
                                    "kept (lower --lr / --arch-lr, or pass --nan-policy skip)") from None
            p.skipped += 1
            print(f"warning: {e} at {where}; step skipped (--nan-policy skip)", flush=True)
            terms = None
        self.w_sched.step()
        self._check_finite(epoch, in_epoch)
        p.step += 1
        if terms is not None and (p.step % cfg.log_every == 0 or p.step == self.total_steps):
            self._log_step(w_value, terms, phase, sparsity)
        return terms, w_value

    def _log_step(self, w_value: float, terms: dict[str, float], phase: str | None, sparsity: float | None) -> None:
        writer, step = self.writer, self.progress.step
        writer.add_scalar("search/weight_loss", w_value, step)
        for k, v in terms.items():
            writer.add_scalar(f"search/{k}", v, step)
        writer.add_scalar("search/target_ratio", self.cfg.ratio, step)
        writer.add_scalar("search/tau", self.supernet.tau, step)
        writer.add_scalar("search/lr", self.w_opt.param_groups[0]["lr"], step)
        if self.sapp is not None:
            writer.add_scalar("sapp/phase", PHASES.index(phase), step)
            writer.add_scalar("sapp/sparsity", sparsity, step)

    def _evaluate(self, arch: Any, seed: int | None = None) -> dict[str, Any]:
        """Test metrics of ``arch`` in hard mode, BN recalibrated on the train loader (its batches
        and augmentation reset to ``seed`` first, when given: :func:`recalibrate_bn`); the supernet is
        left in hard mode on ``arch``."""
        self.supernet.set_arch(arch)
        recalibrate_bn(self.supernet, self.data.train, self.device, seed=seed)
        return engine.evaluate(self.supernet, self.data.test, self.device)

    def _end_epoch(self, epoch: int, t0: float) -> None:
        net, p, writer, step = self.supernet, self.progress, self.writer, self.progress.step
        arch = net.derive_arch(epoch=epoch + 1)
        val = self._evaluate(arch)
        net.search()
        tb.log_search_epoch(writer, net, arch, val["top1"], step)
        p.wall += time.perf_counter() - t0
        p.history.append({"epoch": epoch + 1, "flops_ratio": arch.flops_ratio, "params_ratio": arch.params_ratio,
                          "top1": val["top1"], "tau": net.tau, "widths": arch.widths, "depths": arch.depths})
        print(f"epoch {epoch + 1}/{self.cfg.epochs}  derived {self.cfg.metric} ratio "
              f"{budget_ratio(arch, self.cfg.metric, self.latency):.3f}  hard-mode test top-1 {val['top1']:.2f}%  "
              f"tau {net.tau:.2f}", flush=True)
        p.epoch, p.in_epoch = epoch + 1, 0
        save_search_state(self, epoch + 1, 0, p.wall)

    # -- decode: the final architecture, its slim network, the metrics --------------------------------
    def decode(self) -> SearchResult:
        """The final architecture (:meth:`ArchStepper.decode`: the argmax, moved into the budget),
        its hard-mode test top-1, its slim network and the metrics."""
        cfg, net, p = self.cfg, self.supernet, self.progress
        pre_decode_ratio = self.stepper.current_cost() / self.stepper.full
        with torch.no_grad():
            expected_ratio = self.stepper.expected_cost().item() / self.stepper.full
        # SA++: widths within the last phase's masks, then the masks become exactly the kept blocks
        caps = self.sapp.caps() if self.sapp is not None else None
        widths, depths, projection_steps = self.stepper.decode(caps=caps) if cfg.decode else (*net.argmax(), 0)
        landing: list[dict] = []
        if cfg.decode and cfg.metric == "latency" and cfg.latency_feedback and cfg.runtime == "ort-cpu":
            widths, depths, projection_steps, landing = measured_landing(self.stepper, self.teacher, cfg, caps)
        arch = net.make_arch(widths, depths, meta=dict(
            epochs=cfg.epochs, projection_steps=projection_steps, pre_decode_ratio=pre_decode_ratio,
            landing_steps=self.landing_steps,
            cost_loss=cfg.cost_loss, decode=cfg.decode, channel_order=cfg.channel_order, metric=cfg.metric,
            target_ratio=cfg.ratio, tolerance=cfg.tolerance, fill_budget=cfg.fill, seed=cfg.seed, dataset=self.data.name,
            teacher=self.teacher_source, space=net.space.to_dict()))
        if self.sapp is not None:
            self.sapp.finalize(arch)
        within = landed_within(landing, widths, depths, cfg) if landing else self.stepper.within(widths, depths)
        # recalibrated on batches the seed fixes, not what the epochs drew before (a search resumed
        # after its last epoch drew none of them)
        val = self._evaluate(arch, seed=cfg.seed)
        slim = materialize(net, arch).cpu()
        arch = to_original(arch, self.perms)  # arch.json refers to the teacher's channels as trained
        net.search()
        metrics = {"top1_hard_mode": val["top1"], "flops": arch.flops, "params": arch.params,
                   "flops_ratio": arch.flops_ratio, "params_ratio": arch.params_ratio, "target_metric": cfg.metric,
                   "target_ratio": cfg.ratio, "band": list(cfg.band), "within_tolerance": within, "wall_time_s": round(p.wall, 3),
                   "epochs": cfg.epochs, "steps": p.step, "projection_steps": projection_steps,
                   "decode_moves": projection_steps, "pre_decode_ratio": pre_decode_ratio,
                   "landing_steps": self.landing_steps, "expected_ratio": expected_ratio, "skipped_steps": p.skipped}
        if landing:
            metrics.update(latency_feedback=landing, latency_feedback_rounds=len(landing) - 1)
        if distributed.is_active():
            # Checked, not assumed: every rank must end with rank 0's architecture (and SA++) logits.
            metrics.update(world_size=distributed.world_size(), rank_divergence=distributed.max_divergence(
                [*net.arch_parameters(), *net.attention_parameters()]))
        if cfg.metric == "latency" and self.main:
            metrics.update(latency.check_prediction(self.latency, slim, self.teacher, arch, cfg.latency_batch,
                                            cfg.latency_threads or torch.get_num_threads()))
        return SearchResult(arch=arch, slim=slim, history=list(p.history), metrics=metrics, supernet=net,
                            run_dir=self.output)

    # -- save: the run directory ------------------------------------------------------------------
    def save(self, result: SearchResult) -> None:
        """Write the run directory (rank 0)."""
        out, arch, info = self.output, result.arch, self.data.info
        data = {"input_size": list(self.data.input_size)}
        if info is not None:
            data = {"img_size": info.img_size, "mean": list(info.mean), "std": list(info.std)}
        arch.to_json(out / "arch.json")
        atomic_write_json(out / "arch_history.json", result.history)
        save_weights(out / "supernet.safetensors", result.supernet.state_dict())
        save_run(out, result.slim, model_name=arch.model, model_kwargs=arch.model_kwargs, input_size=arch.input_size,
                 metrics=result.metrics, extra_config={"stage": "search", "arch": arch.to_dict(),
                                                       "dataset": self.data.name, "data": data,
                                                       "search": dataclasses.asdict(self.cfg)})
        # the decoded architecture is the final step, one past the last search step
        step = self.progress.step + self.landing_steps + 1
        tb.log_search_end(self.writer, result.supernet, arch, result.slim, step)
        tb.log_session(self.writer, tb.runs.search_hparams(self.cfg, arch, result.supernet.k),
                       tb.runs.search_results(result.metrics), step)

    def report(self, result: SearchResult) -> None:
        """Print the chosen widths and depths and the summary (with the files written, if any)."""
        print(format_table(result.arch.summary_rows(), header=["group / stage", "original", "chosen"]))
        print(format_table(summary_rows(self.cfg, result, self.output), header=["search", "original", "result"]))
        if self.output is not None:
            print(f"TensorBoard: tensorboard --logdir {self.output}")
