"""A search's resumable state: what :class:`~tas.nas.searcher.Searcher` saves every ``--checkpoint-every``
steps and at every epoch's end (``state/``, safetensors + JSON, atomically), and how a ``--resume`` takes
it back so that the resumed search ends bit-identical to the uninterrupted one.

Each function takes the searcher (typed ``Any``: this module sits below it) and touches only what the
state holds: the supernet, the optimisers and scheduler, the controller's multipliers, the SA++ phase,
the counters, the RNG streams and the width choices made before the supernet was built.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import CheckpointError
from ..io.checkpoint import check_extension, rng_state, save_state, set_rng_state
from .progress import Progress

__all__ = ["save_search_state", "restore_search_state", "resume_rng"]


def save_search_state(s: Any, epoch_done: int, step_in_epoch: int, seconds: float) -> None:
    """Write the search's state after ``epoch_done`` epochs and ``step_in_epoch`` steps of the next (rank 0)."""
    if not s.main:
        return
    p, net, lengths = s.progress, s.supernet, s.epoch_lengths
    partway = 0 < epoch_done and not step_in_epoch and lengths[epoch_done - 1] < s.steps_per_epoch
    save_state(s.out, {"supernet": net.state_dict(), "w_opt": s.w_opt.state_dict(),
                       "a_opt": s.stepper.optimizer.state_dict(), "w_sched": s.w_sched.state_dict(),
                       **({"attn_opt": s.attn_opt.state_dict()} if s.attn_opt is not None else {}),
                       "epoch": epoch_done, "step": p.step, "step_in_epoch": step_in_epoch,
                       "skipped_steps": p.skipped, "wall_time_s": seconds,
                       "history": json.dumps(p.history), "rng": rng_state(),
                       "gumbel_rng": net.generator.get_state(), "channel_perms": json.dumps(s.perms),
                       "scaler": s.precision.state_dict(),
                       **({"dual": s.stepper.controller.state_dict()} if s.stepper.controller is not None else {}),
                       **({"aligned_widths": json.dumps(net.space.widths)} if net.space.divisor == "auto" else {}),
                       **({"bounded_widths": json.dumps(net.space.widths)} if s.cfg.limit_widths else {}),
                       **({"ended_partway": s.cfg.epochs} if partway else {})})


def restore_search_state(s: Any) -> None:
    """Load ``s.state`` (read by ``--resume``) into the supernet, optimisers and counters.

    The global RNG is kept aside in ``s.progress.rng`` for :func:`resume_rng`; the Gumbel temperature is
    the last step's, so a search resumed after its last step takes its landing steps at it.
    """
    state, p = s.state, s.progress
    check_extension(state, s.cfg.epochs, s.out)
    try:
        s.supernet.load_state_dict(state["supernet"])
        s.w_opt.load_state_dict(state["w_opt"])
        s.stepper.optimizer.load_state_dict(state["a_opt"])
        if s.stepper.controller is not None:
            s.stepper.controller.load_state_dict(state["dual"])
        if s.attn_opt is not None:
            s.attn_opt.load_state_dict(state["attn_opt"])
            done = int(state["step"])
            s.sapp.phase_index = s.sapp.schedule.phase(done - 1)[0] if done else None
        s.w_sched.load_state_dict(state["w_sched"])
        p.epoch, p.step, p.wall = int(state["epoch"]), int(state["step"]), float(state["wall_time_s"])
        p.in_epoch, p.skipped = int(state.get("step_in_epoch", 0)), int(state.get("skipped_steps", 0))
        p.history, p.rng = json.loads(state["history"]), state["rng"]
        s.precision.load_state_dict(state.get("scaler"))
        if "gumbel_rng" in state:  # states written before the Gumbel draws had their own stream
            s.supernet.generator.set_state(state["gumbel_rng"].cpu())
        s.supernet.tau = s.tau_at_step(max(p.step - 1, 0))
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"--resume: the state in {s.out} does not fit this search ({e})") from None
    print(f"resuming {s.out} at epoch {p.epoch + 1}/{s.cfg.epochs}, step {p.in_epoch + 1}")


def resume_rng(progress: Progress) -> None:
    """A resumed search's saved global RNG (it draws the augmentation and the BN recalibration's
    batches), restored once: where the resumed epoch's batch order is fixed, or before the landing
    steps (not checkpointed) when the state was saved at the end of the last epoch."""
    if progress.rng is not None:
        set_rng_state(progress.rng)
        progress.rng = None
