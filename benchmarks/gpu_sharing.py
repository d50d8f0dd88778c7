"""How do training steps of a small network scale with processes sharing one GPU?

Each of N spawned processes trains its own copy of the model (random data of batch B at 28 px, SGD,
the loss read back every step as the training loop does) for ``--seconds`` after 20 warm-up steps;
the table gives the steps per second of all N together. A network this small leaves a GPU idle
while one Python thread launches its kernels, so several processes should fill it: this is what
``benchmarks/allocation.py --jobs N`` relies on.

    python benchmarks/gpu_sharing.py --models cifar_mobilenetv2 cifar_resnet56 --processes 1 4 12

Needs a CUDA GPU. Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _train(model_name: str, batch: int, seconds: float, queue) -> None:
    import torch.nn.functional as F

    import tas

    torch.set_num_threads(1)
    dev = torch.device("cuda")
    model = tas.create_model(model_name, num_classes=10, in_chans=1).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(batch, 1, 28, 28, device=dev), torch.randint(0, 10, (batch,), device=dev)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    for _ in range(20):
        step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    queue.put(n / (time.perf_counter() - t0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cifar_mobilenetv2", "cifar_resnet56"])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 4, 12])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per process")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("error: needs a CUDA GPU")
    ctx = mp.get_context("spawn")
    print(f"| model | batch | processes | steps/s, all | steps/s per process | ms per step |  ({torch.cuda.get_device_name()})")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for n in args.processes:
            queue = ctx.Queue()
            procs = [ctx.Process(target=_train, args=(name, args.batch_size, args.seconds, queue)) for _ in range(n)]
            for proc in procs:
                proc.start()
            rates = [queue.get(timeout=120 + args.seconds) for _ in procs]
            for proc in procs:
                proc.join()
            total = sum(rates)
            print(f"| {name} | {args.batch_size} | {n} | {total:.0f} | {total / n:.0f} | {1e3 * n / total:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
