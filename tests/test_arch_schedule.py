"""When the search takes its architecture steps (--arch-steps per weight step, --arch-warmup) and what
they score (--arch-kd-alpha)."""
import copy

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.nas.arch_step import ArchStepper
from tas.errors import TasError
from tas.nas.config import SearchConfig
from tas.nas.searcher import SearchData, Searcher

BATCHES = 6  # train and val batches per epoch, 4 images each


def _data() -> SearchData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4 * BATCHES, 3, 8, 8, generator=g), torch.randint(0, 10, (4 * BATCHES,), generator=g)
    xv = torch.randn(4 * BATCHES, 3, 8, 8, generator=g)
    xv[:, 0, 0, 0] = torch.arange(BATCHES).repeat_interleave(4).float()  # each val image names its batch
    val = DataLoader(TensorDataset(xv, y), batch_size=4)  # in order: batch i is val batch i
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=torch.Generator())
    return SearchData(train, val, DataLoader(TensorDataset(x, y), batch_size=8), input_size=(3, 8, 8))


def _searcher(**overrides) -> Searcher:
    torch.manual_seed(0)
    cfg = SearchConfig(flops_ratio=0.5, epochs=1, progress=False, channel_order="none", **overrides)
    cfg.validate()
    s = Searcher(cfg, timm.create_model("cifar_resnet20", num_classes=10), _data(), torch.device("cpu"))
    s.prepare()
    s.budget()
    s._optimizers()
    return s


def _arch_calls(monkeypatch, tmp_path, **overrides) -> list[tuple[int, int]]:
    """(weight steps taken before it, val batch it used) for each architecture step of a search's loop."""
    calls, s = [], _searcher(**overrides)
    step = ArchStepper.step

    def counted(self, images, targets):
        calls.append((s.progress.step, int(images[0, 0, 0, 0])))
        return step(self, images, targets)

    monkeypatch.setattr(ArchStepper, "step", counted)
    s.out = tmp_path  # the loop's state and events (run() would use a temporary directory)
    s.loop()
    s.writer.close()
    assert s.progress.step == BATCHES
    return calls


@pytest.mark.parametrize("overrides, expected", [
    ({}, [(i, i) for i in range(6)]),
    # two per weight step, each on its own val batch (the val half cycled to twice its length)
    ({"arch_steps": 2.0}, [(i // 2, i % 6) for i in range(12)]),
    # one after every second weight step
    ({"arch_steps": 0.5}, [(1, 0), (3, 1), (5, 2)]),
    # the first half trains the weights only; the val batches keep their places
    ({"arch_warmup": 0.5}, [(3, 3), (4, 4), (5, 5)]),
])
def test_architecture_steps_follow_the_schedule(monkeypatch, tmp_path, overrides, expected):
    assert _arch_calls(monkeypatch, tmp_path, **overrides) == expected


@pytest.mark.parametrize("arch_steps", [0.5, 2.0])
def test_resumed_epoch_gets_the_val_batches_it_would_have(arch_steps):
    s = _searcher(arch_steps=arch_steps)
    s.steps_per_epoch = BATCHES
    full = [[int(x[0, 0, 0, 0]) for x, _ in val] for _, val in s._epoch_batches(0, 0)]
    resumed = [[int(x[0, 0, 0, 0]) for x, _ in val] for _, val in s._epoch_batches(0, 3)]
    assert resumed == full[3:]


@pytest.mark.parametrize("flag, value", [("arch_steps", 0.0), ("arch_warmup", 1.0), ("arch_warmup", -0.1),
                                         ("arch_lr_hold", 1.0), ("arch_lr_hold", -0.1), ("entropy_weight", -1.0),
                                         ("arch_lr_schedule", "step"), ("landing_steps", -0.5),
                                         ("landing_lr", 0.0), ("arch_kd_alpha", 1.5), ("arch_kd_alpha", -0.1)])
def test_bad_schedule_is_refused(flag, value):
    with pytest.raises(TasError, match=flag.replace("_", "-")):
        SearchConfig(**{flag: value}).validate()


def test_schedule_flags_reach_the_config(search_script):
    args = search_script.build_parser().parse_args(["--arch-steps", "0.5", "--arch-warmup", "0.25",
                                                    "--arch-lr-schedule", "constant", "--arch-lr-hold", "0.3",
                                                    "--entropy-weight", "0.5", "--landing-steps", "0.25",
                                                    "--landing-lr", "0.4", "--arch-kd-alpha", "0.7"])
    cfg = SearchConfig.from_args(args)
    assert (cfg.landing_steps, cfg.landing_lr, cfg.arch_kd_alpha) == (0.25, 0.4, 0.7)
    assert (cfg.arch_steps, cfg.arch_warmup) == (0.5, 0.25)
    assert (cfg.arch_lr_schedule, cfg.arch_lr_hold, cfg.entropy_weight) == ("constant", 0.3, 0.5)


@pytest.mark.parametrize("alpha", [0.0, 0.9])
def test_arch_kd_alpha_scores_the_val_batch_by_the_distillation_objective(alpha):
    s = _searcher(arch_kd_alpha=alpha, kd_temperature=3.0)
    s.supernet.search().train()
    x, y = next(iter(s.data.val))
    twin = copy.deepcopy(s.supernet)  # a forward moves BN statistics, the step the logits: check on a copy
    torch.manual_seed(1)  # the same Gumbel draws in the copy and in the step
    with torch.no_grad():
        student, teacher = twin(x), s.teacher.eval()(x)
    torch.manual_seed(1)
    reported = s.stepper.step(x, y)["arch_ce"]
    # written out rather than through tas.train.distill.kd_loss: the step must compute this objective
    ce = torch.nn.functional.cross_entropy(student, y)
    p_t, log_p_s = torch.softmax(teacher / 3.0, 1), torch.log_softmax(student / 3.0, 1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()
    assert reported == pytest.approx(float((1 - alpha) * ce + alpha * 9.0 * kl), rel=1e-4)
    assert reported != pytest.approx(float(ce), rel=1e-3) or alpha == 0
