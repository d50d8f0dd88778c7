"""Does choosing among random allocations by inherited accuracy beat compound scaling?

The premise of a decode that samples architectures and keeps the best: rank candidates by their
*inherited* val top-1 (the teacher's channels, BatchNorm re-estimated on 20 training batches, as
``allocation.py`` measures it) and the chosen one should distil to a better network. Here the
candidates are ``random-arch`` allocations (seeds ``--first-seed`` on, ``--candidates`` per group):
each group's best by inherited accuracy is distilled as that seed's ``random-arch`` cell, beside
``uniform-depth`` on the same seed, in ``allocation.py``'s cache (its teacher, its settings).

    python benchmarks/inherited_selection.py --preset cpu --budget 8 --output runs/allocation/cpu_sel8

Flags after the script's own go to ``allocation.py`` (``--preset``, ``--budget``, ``--output``, ...).
Prints the candidates' scores, the chosen seeds and the paired differences; writes
``<output>/inherited_selection.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import allocation  # noqa: E402
from benchstats import paired_differences  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--ratio", type=float, default=0.12)
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--candidates", type=int, default=8, help="random allocations per choice")
    p.add_argument("--groups", type=int, default=6, help="choices (each a seed of the paired table)")
    own, rest = p.parse_known_args(argv)
    common = [*rest, "--models", own.model, "--ratios", str(own.ratio), "--uniform-depth", "always", "--doc", "-"]
    args = allocation.parse_args([*common, "--methods", "random-arch", "uniform-depth"])
    allocation.register_dataset(args.data_dir, args.limit, args.val)
    bench = allocation.AllocationBench(args)
    bench.teacher(own.model)  # trained (until it plateaus) unless cached
    teacher = allocation.load_run(bench.teacher_dir(own.model))[0].eval()
    loaders = allocation.create_loaders(allocation.DATASET, data_dir=args.data_dir, batch_size=args.batch_size,
                                        img_size=args.img_size, augment=False)  # as AllocationBench.inherited
    from tas.baselines.base import create_baseline_arch

    torch.set_num_threads(args.threads)
    seeds = range(own.first_seed, own.first_seed + own.candidates * own.groups)
    scores = {}
    for s in seeds:
        arch = create_baseline_arch("random-arch", teacher, own.ratio, input_size=(1, args.img_size, args.img_size),
                                    model_name=own.model, model_kwargs={"num_classes": 10, "in_chans": 1}, seed=s)
        scores[s] = allocation.inherited_top1(teacher, arch, loaders, "cpu")
        allocation.log(f"candidate {s}: inherited val top-1 {scores[s]:.1f}%, FLOPs {arch.flops_ratio:.3f}")
    chosen = [max(seeds[g:g + own.candidates], key=scores.__getitem__)
              for g in range(0, len(seeds), own.candidates)]
    allocation.main([*common, "--methods", "random-arch", "uniform-depth", "--seeds", *map(str, chosen)])
    cells = json.loads((Path(args.output) / "results.json").read_text())["cells"]
    key = "{}/r{}/s{}/{}".format
    top1 = {m: {s: cells[key(own.model, own.ratio, s, m)]["top1"] for s in chosen} for m in ("random-arch", "uniform-depth")}
    d = paired_differences(top1["random-arch"], top1["uniform-depth"])
    print(f"chosen seeds {chosen}: best-of-{own.candidates} random-arch {np.mean(list(top1['random-arch'].values())):.2f} "
          f"test, uniform-depth {np.mean(list(top1['uniform-depth'].values())):.2f}; paired {d['mean']:+.2f} "
          f"[{d['lo']:+.2f}, {d['hi']:+.2f}]")
    out = Path(args.output) / "inherited_selection.json"
    out.write_text(json.dumps({"scores": scores, "chosen": chosen, "top1": top1, "paired": d}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
