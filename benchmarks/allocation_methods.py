"""The allocation benchmark's methods: which exist, which search, which borrow a search, and the
settings each TAS variant changes (``benchmarks/allocation.py`` runs them, ``allocation_report.py``
reports them)."""
from __future__ import annotations

from pathlib import Path

from compare import LATENCY_METHOD

WIDTH_ONLY = ("uniform", "l1", "synflow", "tas-width", "tas-width-filters")  # no depth choice: none below the width-only minimum
#: diagnostic: the same seed's ``tas`` architecture distilled for the whole budget, as the baselines are
#: (isolates the architecture from the epochs TAS spends searching); runs after that ``tas`` cell
ARCH_ONLY = "tas-arch"
#: cells that reuse the same seed's ``tas`` search and change only its distillation (its settings here)
BORROWERS = {
    ARCH_ONLY: {},
    # the search's own weights (the supernet's, trained while it searched) as the start, not the teacher's
    "tas-init": {"init": "search"},
}
#: cells whose architecture a baseline's rule derives from the same seed's ``tas`` search (no second search;
#: charged that search's epochs, as ``tas`` is): the baseline, given the searched depths as its ``depths``
DERIVED = {
    # TAS's depths, widths scaled uniformly at them, channels by filter L1 (the l1 baseline's rule): do
    # TAS's widths beat a uniform rule's at the depths it chose?
    "tas-depth": "l1",
}
#: TAS variants (diagnostics and candidate fixes): the search settings each changes
VARIANTS = {
    # widths only, every block kept: does the search lose by dropping depth?
    "tas-width": {"search_depth": "off"},
    # the controller aims at the target itself and the decode fills the budget up to it: the default band
    # (target - 0.05 of the full FLOPs .. target) lets a 0.12 search end at 0.07, 40 % of its budget unspent
    "tas-fill": {"fill_budget": True},
    # the weight step distils from the teacher (KD α 0.9, T 4, as the distillation), and the distillation
    # starts from those weights (tas-init's start, trained on soft targets rather than labels)
    "tas-kd": {"kd_alpha": 0.9},
    # the architecture step scores the val half by the distillation's own objective (KD α 0.9, T 4, from the
    # teacher's soft targets) rather than by CE on labels: the network is distilled afterwards, not trained
    "tas-akd": {"arch_kd_alpha": 0.9},
    # the channel order of the l1 baseline (producers' filter L1, unnormalised) instead of the group L1
    "tas-filters": {"channel_order": "filters"},
    # two architecture steps per weight step: twice the controller's steps in the same search epoch
    "tas-arch2": {"arch_steps": 2.0},
    # four: the CE's per-step SNR is 0.1-0.4 (arch_gradient_snr.py), so its drift grows with the steps
    "tas-arch4": {"arch_steps": 4.0},
    # the search stops halfway through its epoch and the distillation gets the other half (3.5 of 4): the
    # search's epoch costs about half a point (tas-arch); does half of it decide as well?
    "tas-half": {},
    # four Gumbel draws per architecture step (the val batch in four chunks): the CE gradient's noise is the
    # draws', so this halves its sd at the same compute (benchmarks/arch_gradient_snr.py)
    "tas-draws": {"arch_draws": 4},
    # ablation: the architecture step without its val CE (budget and entropy terms only): what does the data decide?
    "tas-noce": {"arch_ce_weight": 0.0},
    # the finer space (every block count, widths in multiples of 4; cifar_resnet models only): at 0.12 of
    # cifar_resnet56 every move of the default space is wider than the band (docs/benchmarks_search_grain.md)
    "tas-fine": {"space": "cifar_resnet_fine"},
    # the default depth rule with the fine space's widths (multiples of 4; benchmarks/spaces/cifar_resnet_w4.yaml)
    "tas-w4": {"space": str(Path(__file__).resolve().parent / "spaces" / "cifar_resnet_w4.yaml")},
}
VARIANTS["tas-width-filters"] = {**VARIANTS["tas-width"], **VARIANTS["tas-filters"]}
#: a variant's distillation settings
VARIANT_DISTILL = {"tas-kd": {"init": "search"}}
#: a variant's search length, as a fraction of the preset's ``search_epochs`` (the rest goes to its distillation)
VARIANT_SEARCH_SCALE = {"tas-half": 0.5}
#: ``random-arch`` (a seeded random allocation, channels by L1) says how much allocation alone moves accuracy
METHODS = ("tas", LATENCY_METHOD, "uniform", "uniform-depth", "l1", "synflow", "random-arch", *BORROWERS, *DERIVED,
           *VARIANTS)
#: the methods that take the same seed's ``tas`` search and so run after it
FOLLOWERS = (*BORROWERS, *DERIVED)
#: the methods that search (their metrics.json reports the pre-decode argmax)
SEARCHES = ("tas", LATENCY_METHOD, *VARIANTS)
REFERENCES = ("uniform", "uniform-depth")  # the trivial rule a ratio is compared against, in order
