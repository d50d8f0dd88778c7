"""``python -m tas.latency build``: measure (or load the cached) latency table of a model's search
space and print its summary, the width alignment and where it is cached."""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from ..cli import parse_args
from ..deploy import latency
from ..deploy.latency import DEFAULT_CACHE_DIR, RUNTIMES, aligned_candidates, load_or_build
from ..errors import TasError
from ..io.checkpoint import atomic_write_json
from ..models.factory import create_model
from ..nas.supernet import create_supernet


def build_parser(prog: str | None = "python -m tas.latency") -> argparse.ArgumentParser:
    # the latency package's summary line: this module's docstring is about the command, not the tool
    summary = (latency.__doc__ or "").split("\n\n")[0]
    p = argparse.ArgumentParser(prog=prog, description=summary)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="measure (or load the cached) latency table of a model's search space")
    b.add_argument("--model", required=True, help="timm model name (cifar_resnet20, resnet18, ...)")
    b.add_argument("--input-size", type=int, nargs=3, required=True, metavar=("C", "H", "W"))
    b.add_argument("--num-classes", type=int, default=10, help="classifier outputs; match your teacher's (default 10)")
    b.add_argument("--space", default=None, help="search space preset or YAML (default: the model's preset)")
    b.add_argument("--runtime", default="ort-cpu", choices=RUNTIMES)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--threads", type=int, default=2, help="ORT intra-op / torch CPU threads (default 2)")
    b.add_argument("--repeats", type=int, default=30)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--warm-calls", type=int, default=0,
                   help="untimed calls before each timed one (0: cold caches, as in a network bigger than them)")
    b.add_argument("--cache-dir", default=None, help=f"default {DEFAULT_CACHE_DIR}")
    b.add_argument("--rebuild", action="store_true", help="measure again even when a cached table exists")
    b.add_argument("--json", default=None, help="also write the table to this JSON file")
    b.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = "python -m tas.latency") -> int:
    """``build``: load or measure the table, print its summary, the width alignment and the cache path."""
    args = parse_args(build_parser(prog), argv)
    size = list(args.input_size)
    if min(size) < 1:
        raise TasError(f"--input-size must be positive, got {size}")
    model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0]).eval()
    supernet = create_supernet(model, args.space, input_size=size, model_name=args.model,
                               model_kwargs={"num_classes": args.num_classes, "in_chans": size[0]})
    t0 = time.perf_counter()
    table = load_or_build(supernet, args.runtime, args.batch, args.threads, args.repeats, args.warmup,
                          cache_dir=args.cache_dir, progress=not args.no_progress, rebuild=args.rebuild,
                          warm_calls=args.warm_calls)
    took = time.perf_counter() - t0
    print(table.summary())
    for note in table.meta.get("notes", []):
        print(f"note: {note}")
    aligned = aligned_candidates(table, {n: g.widths for n, g in supernet.groups().items()})
    dropped = {n: sorted(set(g.widths) - set(aligned[n])) for n, g in supernet.groups().items()}
    dropped = {n: d for n, d in dropped.items() if d}
    print("width alignment drops: " + ("; ".join(f"{n}: {d}" for n, d in dropped.items()) if dropped else "nothing"))
    fastest, _, _ = table.fastest(supernet)
    print(f"predicted: full {table.full():.4f} ms, fastest in the space {fastest:.4f} ms "
          f"(ratio {fastest / table.full():.3f}); {table.describe()}")
    how = "loaded from cache" if table.source == "cache" else f"measured {table.meta['micro_models']} micro-models in {took:.1f} s"
    print(f"latency table: {table.path} ({how})")
    if args.json:
        atomic_write_json(args.json, table.to_dict())
    return 0
