"""--search-depth: depth searched (on), every block kept (off), or kept where widths alone reach the target (auto)."""
import json

import pytest
import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.baselines import width_only_minimum
from tas.errors import TasError
from tas.nas.config import SearchConfig
from tas.nas.searcher import Searcher
from tas.prune.arch import Arch
from test_arch_schedule import _data
from test_search import FLAGS


def _depth_candidates(**overrides) -> dict[str, list[int]]:
    cfg = SearchConfig(epochs=1, progress=False, channel_order="none", **overrides)
    cfg.validate()
    s = Searcher(cfg, timm.create_model("cifar_resnet20", num_classes=10), _data(), torch.device("cpu"))
    s.prepare()
    return {n: st.depths for n, st in s.supernet.stages().items()}


def _widths_floor(metric: str = "flops") -> float:
    """The smallest ``metric`` ratio of the preset with every block kept, from the baselines' own helper."""
    net = tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8))
    return width_only_minimum(net, metric)


def test_search_depth_on_off_and_auto_at_both_sides_of_the_width_only_minimum():
    searched, kept = [1, 2, 3], [3]
    floor = _widths_floor()
    assert 0.1 < floor < 0.2
    assert set(map(tuple, _depth_candidates(flops_ratio=0.5).values())) == {tuple(searched)}  # the default: on
    assert all(d == kept for d in _depth_candidates(flops_ratio=0.5, search_depth="off").values())
    # auto: widths alone reach a target just above the floor, so every block stays; just below it they cannot
    assert all(d == kept for d in _depth_candidates(flops_ratio=floor + 0.002, search_depth="auto").values())
    assert all(d == searched for d in _depth_candidates(flops_ratio=floor - 0.002, search_depth="auto").values())
    # a params target is compared in params: between the two floors widths reach it in params, not in FLOPs
    between = (_widths_floor("params") + floor) / 2
    assert _widths_floor("params") < between < floor
    assert all(d == kept for d in _depth_candidates(params_ratio=between, search_depth="auto").values())


def test_bad_search_depth_is_refused():
    with pytest.raises(TasError, match="--search-depth"):
        SearchConfig(search_depth="sometimes").validate()


def test_search_depth_off_from_the_cli_keeps_every_block(tmp_path, search_script, teacher_run):
    # --arch-lr 0: the depth logits stay at their random start, whose argmax drops blocks when depth is searched
    out = tmp_path / "off"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.3", "--arch-lr", "0",
                                       "--epochs", "1", "--search-depth", "off", "--output", str(out)]) == 0
    arch = Arch.from_json(out / "arch.json")
    assert arch.depths == {"layer1": 3, "layer2": 3, "layer3": 3}
    assert arch.meta["space"]["search"]["depth"] is False
    assert json.loads((out / "metrics.json").read_text())["within_tolerance"]
