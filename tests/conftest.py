"""Shared fixtures: the train.py module, tiny-run flags, one trained teacher run per session, and a
fake latency timer."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import tas  # registers cifar_resnet* with timm
from tas.prune.arch import Arch
from tas.prune.families import describe_model
from tas.nas.ops import SearchBN, SearchConv, SearchLinear
from tas.nas.supernet import Supernet

REPO = Path(__file__).resolve().parents[1]

#: the smallest run that still trains: cifar_resnet20 on digits at 16 px, 256 images per split
TINY_FLAGS = ["--model", "cifar_resnet20", "--dataset", "digits", "--img-size", "16", "--limit", "256",
              "--batch-size", "32", "--epochs", "1", "--log-every", "2", "--no-progress", "--device", "cpu"]

# One thread: these models are tiny, and with two OpenMP threads a busy machine (another process
# on the other core) slows every step down ~100x.
torch.set_num_threads(1)


def load_script(name: str):
    """A top-level script (``train.py``, ``search.py``) imported as a module (``main``, ``build_parser``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_script():
    """train.py imported as a module (``main``, ``build_parser``)."""
    return load_script("train")


@pytest.fixture(scope="session")
def search_script():
    """search.py imported as a module."""
    return load_script("search")


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """Flags for a ~1 s training run (add ``--output``)."""
    return list(TINY_FLAGS)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory, train_script) -> Path:
    """A finished 1-epoch cifar_resnet20 teacher run on digits (16 px, 256 images); do not modify it."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert train_script.main(TINY_FLAGS + ["--output", str(out)]) == 0
    return out


def perturb_bn(module: torch.nn.Module, seed: int = 0, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Trained-looking, distinct statistics and affine terms for every BN (per candidate too), so a
    BN that is the identity or the wrong one shows in the logits; returns ``module``. The one BN
    randomiser of the tests (``generator`` continues a caller's stream instead of ``seed``)."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return module


def trained_like_resnet20(seed: int = 0) -> torch.nn.Module:
    """A 1-channel, 10-class ``cifar_resnet20`` in eval mode whose BNs look trained, with wide and
    distinct γ, β and statistics, so that channel scores which read them rarely tie."""
    torch.manual_seed(seed)
    model = tas.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def state_step(run: Path) -> int:
    """``100 × epoch + step-in-epoch`` of the run's saved state (-1 when there is none)."""
    path = run / "state" / "state.json"
    try:
        items = dict((k, v) for k, v in json.loads(path.read_text())["state"]["__dict__"])
    except (OSError, ValueError, KeyError):
        return -1
    return 100 * int(items.get("epoch", 0)) + int(items.get("step_in_epoch", 0))


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so a
    process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_mid_run(cmd: list[str], run: Path, at_least: int) -> None:
    """Start ``cmd`` and kill -9 it and every process it started (e.g. torchrun's workers) as soon
    as a mid-epoch checkpoint past ``at_least`` exists."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and proc.poll() is None:
        s = state_step(run)
        if s >= at_least and s % 100:
            for pid in [proc.pid, *_descendants(proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            break
        time.sleep(0.02)
    proc.wait()
    assert killed, "the run ended before it could be killed"
    assert not _descendants(proc.pid)
    assert not (run / "model.safetensors").exists()


class FakeTimer:
    """A latency-table timer without a clock: ``A·c_in·c_out + B`` seconds per layer (plus
    ``penalty[(layer, c_out)]``), ``whole`` for the whole model, ``null`` for the empty one; counts calls."""

    A, B, WHOLE = 1e-6, 2e-5, 0.5

    def __init__(self, null: float = 0.0, penalty: dict | None = None, whole: float = WHOLE) -> None:
        self.calls, self.null, self.penalty, self.whole = 0, null, penalty or {}, whole
        self.__name__ = "fake"

    def __call__(self, runnable, x) -> float:
        self.calls += 1
        s = runnable.spec
        if s.kind == "null":
            return self.null
        if s.kind == "model":
            return self.whole
        t = self.A * s.c_in * s.c_out + self.B + self.null
        for (layer, c_out), extra in self.penalty.items():
            if s.layer == layer and s.c_out == c_out:
                t += extra
        return t


# --- The zeroing oracle for materialisation -----------------------------------------------------
# An independent oracle for materialisation, and a perturbation that moves a supernet's weights the
# way a search does.
#
# The oracle computes an architecture without slicing anything: it is the *original* (unpruned)
# network holding the weights in question, whose every conv / BN output has the pruned channels of its
# group set to zero and whose dropped blocks are identities. Zeroed channels contribute nothing to
# any later conv, SE pool or residual sum, so the kept channels follow exactly the slim network's
# function, up to float rounding. The one exception is ECA: its 1-d conv slides along the channel axis
# and sees the zeros between kept channels, where the slim network's sees the kept channels side by
# side; with an ECA kernel that only has a centre tap the two agree again.


def search_weights(supernet: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """The supernet's weights under the original network's state-dict keys: each wrapped layer's
    own tensors, and for a BN the copy of the candidate whose width ``arch`` keeps (the full-width
    candidate for a width outside the candidates)."""
    out: dict[str, torch.Tensor] = {}
    wrapped = []
    for name, m in supernet.model.named_modules():
        if isinstance(m, SearchConv):
            inner = m.conv
        elif isinstance(m, SearchLinear):
            inner = m.fc
        elif isinstance(m, SearchBN):
            group = next(l.out_group for l in supernet.graph.layers if l.name == name)
            width, widths = arch.groups[group]["width"], supernet.groups()[group].widths
            inner = m.bns[widths.index(width) if width in widths else len(widths) - 1]
        else:
            continue
        wrapped.append(f"{name}.")
        out.update({f"{name}.{k}": v for k, v in inner.state_dict().items()})
    for k, v in supernet.model.state_dict().items():
        if not k.startswith(tuple(wrapped)):
            out[k] = v
    return out


def zeroing_oracle(source: nn.Module, arch: Arch) -> nn.Module:
    """The original network computing ``arch`` by zeroing (see the module docstring).

    ``source`` is a plain network (its own weights) or a :class:`Supernet` (its search weights,
    :func:`search_weights`, loaded into a copy of the network it was built from).
    """
    if isinstance(source, Supernet):
        net = copy.deepcopy(source.template)
        net.load_state_dict(search_weights(source, arch))
        graph = source.graph
    else:
        net, graph = copy.deepcopy(source), describe_model(source)
    for layer in graph.layers:
        if layer.kind in ("conv", "bn") and layer.out_group is not None:
            g = arch.groups[layer.out_group]
            keep = torch.zeros(g["channels"])
            keep[g["indices"]] = 1.0
            net.get_submodule(layer.name).register_forward_hook(
                lambda _m, _i, y, keep=keep: y * keep.to(y).view(1, -1, 1, 1))
    for name, s in arch.stages.items():
        stage = net.get_submodule(name)
        for b in range(s["depth"], s["blocks"]):
            stage[b] = nn.Identity()
    return net.eval()


def perturb_like_search(supernet: Supernet, seed: int = 0, scale: float = 0.2) -> None:
    """Move every weight the search trains away from the teacher's: shared convs, ECA / SE weights
    and the classifier by relative noise, and each candidate's BN separately to trained-looking
    affine parameters and statistics (no zero-initialised last BN of a block left, which would hide
    the whole residual branch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in supernet.weight_parameters():
            p.add_(scale * p.abs().mean().clamp(min=1e-2) * torch.randn(p.shape, generator=g))
    perturb_bn(supernet, generator=g)


def assert_hard_mode_is_the_slim_network(supernet: Supernet, arch: Arch, x: torch.Tensor) -> nn.Module:
    """Check that ``supernet`` in hard mode at ``arch`` computes what its materialised slim network
    computes, and that the slim network is a plain network of the template's class (no search modules)
    at exactly ``arch``'s FLOPs and params (counted on the network, not taken from the spec); return it."""
    from tas.prune.flops import count_flops, count_params
    from tas.prune.materialize import materialize

    supernet.set_arch(arch)
    with torch.no_grad():
        hard = supernet(x)
        slim = materialize(supernet, arch).eval()
        out = slim(x)
    assert (hard - out).abs().max() <= 1e-4
    assert count_flops(slim, tuple(x.shape[1:])) == arch.flops
    assert count_params(slim) == arch.params
    assert type(slim) is type(supernet.template)
    assert not any(isinstance(m, (SearchConv, SearchBN)) for m in slim.modules())
    return slim


def grouped_random_indices(supernet: Supernet, arch: Arch, seed: int = 0) -> Arch:
    """``arch`` with non-prefix kept channels: random ones, at the same local positions in every
    conv group of a grouped group (what SA++ and the baselines produce)."""
    gen = torch.Generator().manual_seed(seed)
    arch = Arch.from_dict(copy.deepcopy(arch.to_dict()))
    for name, g in arch.groups.items():
        q = supernet.graph.groups[name].conv_groups
        per = g["channels"] // q
        local = torch.randperm(per, generator=gen)[: g["width"] // q]
        g["indices"] = sorted(int(c * per + i) for c in range(q) for i in local)
    return arch
