"""How much the architecture step's cross-entropy says about each logit: signal against noise.

A TAS architecture step moves the width logits α and depth logits β by Adam on the CE of one val batch
through one Gumbel draw, plus the budget term. If the CE gradient's sign flips from step to step, Adam
(which normalises each logit's step) averages it to little, and the budget term and the entropy term
decide the architecture. This script measures, for one supernet state, the CE gradient of every logit
over ``--batches`` val batches × ``--draws`` Gumbel draws:

* **SNR** = |mean| / sd of the per-step gradient (median over the logits, and the share above 0.5);
  about ``1 / SNR²`` steps are needed before the mean's sign shows through one step's noise;
* the share of the variance that comes from the Gumbel draws (the rest: which val batch);
* the mean gradient's size against the budget term's and the entropy term's, as a search step
  weighs them (``|λ1 + 2λ2·(ratio - aim)| · |∂ratio/∂logit|`` at the controller's state, the
  entropy at its full weight).

States: ``start`` (the supernet as a search builds it, flat logits, τ 5), and ``end`` (a finished
search's ``supernet.safetensors``, τ ``--end-tau``) when ``--search-run`` names one.

    python benchmarks/arch_gradient_snr.py --teacher runs/allocation/cpu_rep/cifar_resnet20/teacher/e8 \\
        --search-run runs/allocation/cpu_rep/cifar_resnet20/r0.25/s0/tas/search --flops-ratio 0.25
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import ensure_dataset, write_report  # noqa: E402
from tas.cli import format_table  # noqa: E402
from tas.data import create_loaders  # noqa: E402
from tas.io.checkpoint import has_state, load_state, load_weights  # noqa: E402
from tas.nas.config import SearchConfig  # noqa: E402
from tas.nas.run import load_teacher_and_data  # noqa: E402
from tas.nas.searcher import SearchData, Searcher  # noqa: E402
from tas.train.loop import seed_everything  # noqa: E402


def build(args) -> Searcher:
    cfg = SearchConfig(teacher=args.teacher, dataset="fashion-mnist", data_dir=args.data_dir, flops_ratio=args.flops_ratio,
                       limit=args.limit, batch_size=args.batch_size, seed=args.seed, progress=False, device="cpu",
                       arch_draws=args.arch_draws)
    cfg.validate()
    teacher, tconfig, info = load_teacher_and_data(cfg)
    seed_everything(cfg.seed)
    loaders = create_loaders(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, seed=cfg.seed,
                             img_size=info.img_size, search_split=True, limit=cfg.limit, augment=True)
    data = SearchData(loaders["train"], loaders["val"], loaders["test"],
                      input_size=(info.in_chans, info.img_size, info.img_size), name=cfg.dataset, info=info)
    s = Searcher(cfg, teacher, data, torch.device("cpu"), model_name=tconfig["model"], model_kwargs=tconfig["model_kwargs"])
    s.prepare()
    s.budget()
    return s


def ce_gradients(s: Searcher, batches: list, draws: int) -> torch.Tensor:
    """``[batches, draws, logits]``: the CE gradient of every architecture logit, one row per (batch, draw)."""
    params = list(s.supernet.arch_parameters())
    out = []
    for x, y in batches:
        rows = []
        for _ in range(draws):
            loss = s.stepper.val_loss(x, y)  # as the step scores it (--arch-draws chunks)
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        out.append(torch.stack(rows))
    return torch.stack(out)


def term_gradient(s: Searcher, which: str) -> torch.Tensor:
    """The gradient of the budget term (as the controller weighs it now) or of the entropy term at full weight."""
    params = list(s.supernet.arch_parameters())
    if which == "budget":
        loss, weight, _, _ = s.stepper._cost_loss()
        loss = weight * loss
    else:
        loss = s.cfg.entropy_weight * s.stepper.mean_entropy()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, allow_unused=False)])


def measure(s: Searcher, state: str, tau: float, batches: list, draws: int) -> dict:
    s.supernet.tau = tau
    s.supernet.search()
    g = ce_gradients(s, batches, draws).double()
    n_width = sum(p.numel() for p in s.supernet.arch_parameters()) - sum(b.numel() for b in s.supernet.betas.values())
    flat = g.reshape(-1, g.shape[-1])
    mean, sd = flat.mean(0), flat.std(0)
    snr = (mean.abs() / sd.clamp_min(1e-12))
    gumbel = g.var(1).mean(0)  # within a batch, over draws
    share = float((gumbel / sd.pow(2).clamp_min(1e-30)).median())
    budget, entropy = term_gradient(s, "budget").double(), term_gradient(s, "entropy").double()
    # |mean| / sd of n draws of pure noise is about 1 / sqrt(n): an SNR near it is no signal at all
    row = {"state": state, "tau": tau, "arch_draws": s.stepper.draws, "logits": int(g.shape[-1]),
           "steps": int(flat.shape[0]), "snr_floor": 1 / math.sqrt(flat.shape[0])}
    for part, sl in (("width", slice(0, n_width)), ("depth", slice(n_width, None))):
        if snr[sl].numel() == 0:
            continue
        row[f"{part}_snr_median"] = float(snr[sl].median())
        row[f"{part}_snr_over_0.5"] = float((snr[sl] > 0.5).double().mean())
        row[f"{part}_budget_over_ce"] = float(budget[sl].abs().median() / mean[sl].abs().median())
        row[f"{part}_entropy_over_ce"] = float(entropy[sl].abs().median() / mean[sl].abs().median())
    row["gumbel_variance_share"] = share
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--search-run", default=None, help="a finished search (its supernet.safetensors: the 'end' state)")
    p.add_argument("--flops-ratio", type=float, default=0.25)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=2500, help="the search's images (weights + architecture halves)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch-draws", type=int, default=1, help="the search's --arch-draws (Gumbel draws per step)")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--draws", type=int, default=6)
    p.add_argument("--start-tau", type=float, default=5.0)
    p.add_argument("--end-tau", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/arch_gradient_snr.json")
    args = p.parse_args(argv)
    ensure_dataset(args.data_dir)
    torch.set_num_threads(1)
    s = build(args)
    batches = [b for b, _ in zip(s.data.val, range(args.batches))]
    rows = [measure(s, "start", args.start_tau, batches, args.draws)]
    if args.search_run:
        run = Path(args.search_run)
        s.supernet.load_state_dict(load_weights(run / "supernet.safetensors"))  # strict: the same supernet
        if has_state(run) and s.stepper.controller is not None:  # the multipliers the search ended with
            saved = load_state(run)
            if "dual" in saved:
                s.stepper.controller.load_state_dict(saved["dual"])
        rows.append(measure(s, "end", args.end_tau, batches, args.draws))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = format_table([[f"{r[c]:.3g}" if isinstance(r.get(c), float) else r.get(c, "–") for c in cols]
                          for r in rows], cols)
    print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    write_report(out.with_suffix(".md"), f"`python benchmarks/arch_gradient_snr.py {' '.join(argv or sys.argv[1:])}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
