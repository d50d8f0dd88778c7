"""Baseline pruners from the literature, on the same search space as TAS, for comparisons at equal FLOPs.

Every baseline turns a trained network and a budget into an :class:`~tas.prune.arch.Arch` of the TAS
search space (every width is one of its group's candidate widths), so the same materialiser,
distillation and export follow::

    arch = create_baseline_arch("l1", teacher, 0.5, input_size=(1, 28, 28), model_name="cifar_resnet20")
    python search.py --method l1 --teacher runs/teacher --flops-ratio 0.5 --output runs/l1

=============  =========================================================  ========================  =======
method         widths (and depths)                                        kept channels             data
=============  =========================================================  ========================  =======
uniform        every group the same fraction r of its width               the first ones (prefix)   none
uniform-depth  as uniform, and every stage the depth fraction r^1.91      the first ones (prefix)   none
               (EfficientNet compound scaling, :mod:`~tas.baselines.scaling`)
l1             as uniform                                                 largest filter L1 norms   none
random         as uniform                                                 random (seeded)           none
random-arch    as uniform-depth, each group's and stage's scale times a   largest filter L1 norms   none
               random log-normal factor (seeded, :mod:`~tas.baselines.random_arch`)
synflow        global SynFlow ranking, iterative (20 rounds, exp.)        highest SynFlow scores    none
plasticity     global filter-magnitude pruning during a fine-tune at a    the surviving masks:      train
               cubic rising sparsity, with regeneration (GraNet)          magnitude + regrowth      split
undecayed      as uniform                                                 highest ``|θ ⊙ ∇L|``      8 batches
               (Good et al. 2022, :mod:`~tas.baselines.undecayed`)        of their filters
task-aware     as uniform (:mod:`~tas.baselines.task_aware`)              highest task-aware score  8 + 8 of
                                                                                                    the task
=============  =========================================================  ========================  =======

The data a baseline reads (:data:`NEEDS_DATA`) are calibration batches of the training split,
passed as ``batches`` (and ``task_batches``: samples of ``--task-classes`` only); :func:`run_baseline`
reads them unaugmented.

All but ``uniform-depth`` and ``random-arch`` are width-only: they keep every stage's full depth, so they refuse a target
below :func:`width_only_minimum`. Each meets its budget within the space's rounding: ``cost ≤
target`` and ``target − cost`` below the cost of one candidate step of one group (measured at full
width, where every step is most expensive), see :func:`max_step_cost`; ``uniform-depth`` and ``random-arch`` below the
cost of its next step, which may be a stage's depth step.
"""
from . import magnitude, plasticity, random_arch, scaling, synflow, task_aware, undecayed  # noqa: F401  (register themselves)
from .base import (BASELINES, DEPTH_SCALING, METHODS, NEEDS_DATA, TRAINING, create_baseline_arch, full_depths, list_baselines,
                   max_step_cost, register_baseline, width_only_minimum)
from .magnitude import l1_channel_scores, uniform_widths
from .run import run_baseline
from .synflow import synflow_scores

__all__ = ["BASELINES", "DEPTH_SCALING", "NEEDS_DATA", "TRAINING", "METHODS", "register_baseline", "list_baselines", "create_baseline_arch", "run_baseline",
           "max_step_cost", "full_depths", "width_only_minimum", "synflow_scores", "l1_channel_scores",
           "uniform_widths"]
