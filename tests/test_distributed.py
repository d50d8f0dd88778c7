"""Data-parallel runs: torchrun (gloo, CPU) against single-process runs, and the pieces they use."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, SequentialSampler

from conftest import kill_mid_run
from tas import distributed

REPO = Path(__file__).resolve().parents[1]

#: a search short enough to stay on the same trajectory in one and two processes (see the README:
#: the runs agree up to float rounding, which long searches can amplify); batches of 25 give the
#: ranks uneven shards (13 + 12), which only the loss-sum gradient reduction gets right
SEARCH = ["--dataset", "digits", "--limit", "64", "--batch-size", "25", "--epochs", "1", "--seed", "3",
          "--no-augment", "--device", "cpu", "--no-progress", "--checkpoint-every", "0"]


def torchrun(script: str, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def arch_logits(run: Path) -> dict[str, torch.Tensor]:
    state = load_file(run / "supernet.safetensors")
    return {k: v for k, v in state.items() if k.endswith(".alpha") or k.startswith("betas.")}


@pytest.mark.slow  # a two-process/kill-9 search: the longest tests; `pytest -m slow`
def test_two_process_search_equals_single_process(tmp_path, teacher_run, search_script):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = ["--teacher", str(teacher_run), *SEARCH]
    assert search_script.main(args + ["--output", str(single)]) == 0
    r = torchrun("search.py", args + ["--output", str(ddp)])
    assert r.returncode == 0, r.stderr[-3000:]

    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["rank_divergence"] == 0.0  # both ranks end with identical α, β
    assert json.loads((ddp / "arch.json").read_text()) == json.loads((single / "arch.json").read_text())
    a, b = arch_logits(single), arch_logits(ddp)
    assert a.keys() == b.keys() and len(a) > 5
    for k in a:
        # rounding differences, amplified by Adam's first steps on near-zero gradients; a wrong shard or
        # a missing BN sync moves them by 0.05-0.15 (exact gradients: test_uneven_shards_give_the_global_gradient)
        torch.testing.assert_close(a[k], b[k], atol=5e-3, rtol=0, msg=k)
    # only rank 0 wrote and printed
    assert r.stdout.count("TensorBoard:") == 1
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1


def test_two_process_training_writes_one_run(tmp_path, tiny_flags):
    out = tmp_path / "teacher"
    # 256 images in batches of 51 leave a last batch of 1: skipped in training, and in evaluation
    # rank 1's shard of it is empty
    r = torchrun("train.py", tiny_flags + ["--output", str(out), "--epochs", "2", "--batch-size", "51"])
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert r.stdout.count("TensorBoard:") == 1
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    # The saved weights load like any run's, and the metrics the two ranks computed together (each
    # evaluating its shard, rank 1's last one empty) are the single-process evaluation of that model.
    from tas.data import create_loaders
    from tas.train.engine import evaluate
    from tas.prune.load import load_run

    model, config = load_run(out)
    assert config["model"] == "cifar_resnet20"
    loaders = create_loaders("digits", batch_size=51, limit=256, img_size=16)
    single = evaluate(model, loaders["test"], "cpu", per_class=True)
    assert metrics["top1"] == pytest.approx(single["top1"], abs=1e-9)
    assert metrics["top5"] == pytest.approx(single["top5"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert metrics["per_class_recall"] == pytest.approx(single["per_class_recall"], abs=1e-9)


@pytest.mark.slow  # a two-process/kill-9 search: the longest tests; `pytest -m slow`
def test_two_process_search_killed_and_resumed(tmp_path, teacher_run):
    """kill -9 of torchrun and its workers mid-epoch; --resume under torchrun ends with the same arch."""
    args = ["--teacher", str(teacher_run), "--dataset", "digits", "--limit", "256", "--batch-size", "16",
            "--epochs", "2", "--seed", "3", "--no-augment", "--device", "cpu", "--no-progress",
            "--checkpoint-every", "2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert torchrun("search.py", args + ["--output", str(straight)]).returncode == 0
    kill_mid_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  str(REPO / "search.py"), *args, "--output", str(killed)], killed, 103)
    r = torchrun("search.py", args + ["--output", str(killed), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    assert json.loads((killed / "arch.json").read_text()) == json.loads((straight / "arch.json").read_text())


def test_sharded_batches_partition_the_global_batches():
    base = BatchSampler(SequentialSampler(range(23)), 8, drop_last=False)  # 8, 8, 7
    shards = [list(distributed.ShardedBatchSampler(base, r, 3)) for r in range(3)]
    for i, batch in enumerate(base):
        assert sorted(sum((s[i] for s in shards), [])) == batch
    assert [len(distributed.ShardedBatchSampler(base, r, 3)) for r in range(3)] == [3, 3, 3]
    small = BatchSampler(SequentialSampler(range(17)), 8, drop_last=False)  # 8, 8, 1
    dropped = distributed.ShardedBatchSampler(small, 0, 2)
    assert len(dropped) == len(list(dropped)) == 2  # a batch smaller than the world is skipped
    # evaluation keeps every sample; a rank whose shard of the last batch is empty skips it
    evals = [distributed.ShardedBatchSampler(small, r, 2, drop_small=False) for r in range(2)]
    assert [len(e) for e in evals] == [len(list(e)) for e in evals] == [3, 2]
    assert sorted(i for e in evals for b in e for i in b) == list(range(17))
    with pytest.raises(Exception, match="at least the number of processes"):
        distributed.ShardedBatchSampler(BatchSampler(SequentialSampler(range(9)), 1, drop_last=False), 0, 2)


def test_collectives_are_identities_in_one_process():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert distributed.reduce_gradients([p], 5, [7.0]) == (5, [7.0])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert distributed.loss_scale(5) == 1.0 and distributed.world_size() == 1 and distributed.is_main()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(distributed.sync_batch_norm(x, None, None, None, None, 0.1, 1e-5),
                               F.batch_norm(x, None, None, None, None, True, 0.1, 1e-5))


def _sync_bn_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo")
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(7, 4, 3, 3, generator=g, dtype=torch.float64) * 3 + 1
        w = torch.randn(4, generator=g, dtype=torch.float64)
        b = torch.randn(4, generator=g, dtype=torch.float64)
        up = torch.randn(7, 4, 3, 3, generator=g, dtype=torch.float64)
        xr = x[rank::world].clone().requires_grad_()
        wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
        rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        y = distributed.sync_batch_norm(xr, rm, rv, wr, br, 0.1, 1e-5)
        (y * up[rank::world]).sum().backward()
        torch.save({"y": y.detach(), "dx": xr.grad, "dw": wr.grad, "db": br.grad, "rm": rm, "rv": rv},
                   f"{out}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _tiny_net_loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, norm) -> torch.Tensor:
    w1, gamma, beta, w2 = params
    h = torch.relu(norm(F.conv2d(x, w1), gamma, beta))
    return F.cross_entropy(h.mean((2, 3)) @ w2, y)


def _gradient_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo")
    try:
        x, y, params = _tiny_problem()
        xs, ys = x[rank::world], y[rank::world]  # 4 + 3 samples
        loss = _tiny_net_loss(params, xs, ys, lambda h, g, b: distributed.sync_batch_norm(h, None, None, g, b, 0.1, 1e-5))
        (loss * distributed.loss_scale(len(ys))).backward()
        n, (loss_sum,) = distributed.reduce_gradients(params, len(ys), [loss.item() * len(ys)])
        torch.save({"n": n, "loss": loss_sum / n, "grads": [p.grad for p in params]}, f"{out}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _tiny_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, 3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    params = [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
              for shape in ((4, 2, 1, 1), (4,), (4,), (4, 3))]
    return x, y, params


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uneven_shards_give_the_global_gradient(tmp_path):
    """Loss sums + one all-reduce: every rank holds the gradient of the global batch's mean loss,
    also when the shards differ in size (averaging per-rank means would weight them wrongly)."""
    import torch.multiprocessing as mp

    mp.spawn(_gradient_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    x, y, params = _tiny_problem()
    loss = _tiny_net_loss(params, x, y, lambda h, g, b: F.batch_norm(h, None, None, g, b, True, 0.1, 1e-5))
    loss.backward()
    for r in range(2):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=True)
        assert got["n"] == 7
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-12)
        for g, p in zip(got["grads"], params):
            torch.testing.assert_close(g, p.grad)


def test_sync_batch_norm_equals_full_batch_norm(tmp_path):
    """Two ranks with uneven shards (4 + 3 samples) normalise, and back-propagate, like one batch of 7."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_bn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 4, 3, 3, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()
    w = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    up = torch.randn(7, 4, 3, 3, generator=g, dtype=torch.float64)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    (y * up).sum().backward()
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["y"], y.detach()[r::2])
        torch.testing.assert_close(got["dx"], x.grad[r::2])
        torch.testing.assert_close(got["rm"], rm)
        torch.testing.assert_close(got["rv"], rv)
    # parameter gradients are per-rank partial sums; the gradient all-reduce adds them
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], w.grad)
    torch.testing.assert_close(ranks[0]["db"] + ranks[1]["db"], b.grad)
