"""tas.metrics.robustness against corruptions applied by hand, and on a model a corruption must break."""
import pytest
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF

from tas.data import DatasetInfo, TensorImageDataset
from tas.metrics import CORRUPTIONS, corrupt, robustness

INFO = DatasetInfo("toy", 2, 1, 8, (0.4,), (0.25,))


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def _top1(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * int((model((pixels - 0.4) / 0.25).argmax(1) == labels).sum()) / len(labels)


def test_matches_transforms_applied_by_hand():
    images, labels = _data()
    model = _model()
    r = robustness(model, TensorImageDataset(images, labels, INFO), ["blur", "contrast", "rotation"], (0, 1, 3),
                   batch_size=16)
    assert r["num_samples"] == 40
    assert r["clean"] == pytest.approx(_top1(model, images, labels), abs=1e-9)
    for name in ("blur", "contrast", "rotation"):  # severity 0 is the clean image
        assert r["accuracy"][name][0] == r["clean"]
    sigma = CORRUPTIONS["blur"][2]
    k = 2 * int(-(-3 * sigma // 1)) + 1
    by_hand = {
        ("blur", 3): TF.gaussian_blur(images, [k, k], [sigma, sigma]),
        ("contrast", 1): images.mean(dim=(1, 2, 3), keepdim=True) * (1 - 0.4) + 0.4 * images,
        ("rotation", 3): TF.rotate(images, 30.0, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0]),
    }
    for (name, v), pixels in by_hand.items():
        assert r["accuracy"][name][v] == pytest.approx(_top1(model, pixels.clamp(0, 1), labels), abs=1e-9), name
    cells = [r["accuracy"][n][v] for n in ("blur", "contrast", "rotation") for v in (0, 1, 3)]
    assert r["mean_corrupted"] == pytest.approx(sum(cells) / len(cells))


def test_noise_is_seeded_and_has_its_strength():
    flat = torch.full((200, 1, 8, 8), 0.5)
    for v, sigma in enumerate(CORRUPTIONS["gaussian_noise"], start=1):
        noisy = corrupt(flat, "gaussian_noise", v, torch.Generator().manual_seed(3))
        assert (noisy - 0.5).std().item() == pytest.approx(sigma, rel=0.05)
    images, labels = _data(64)
    ds = TensorImageDataset(images, labels, INFO)
    # the same seed gives the same noise whichever other cells are measured beside it
    alone = robustness(_model(), ds, ["gaussian_noise"], (3,), seed=1)["accuracy"]["gaussian_noise"][3]
    beside = robustness(_model(), ds, ["blur", "gaussian_noise"], (1, 3), seed=1)["accuracy"]["gaussian_noise"][3]
    assert alone == beside
    others = {robustness(_model(), ds, ["gaussian_noise"], (3,), seed=s)["accuracy"]["gaussian_noise"][3]
              for s in range(2, 8)}
    assert len(others | {alone}) > 1  # the seed does change the noise


class _ContrastDetector(nn.Module):
    """Class 1 iff the image's pixel std (after undoing the normalisation) exceeds 0.15."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = (x * 0.25).flatten(1).std(1)
        return torch.stack([torch.zeros_like(spread), spread - 0.15], 1)


def test_a_model_that_needs_contrast_loses_it():
    # class 0: a faint checkerboard (±0.05 around 0.5), class 1: a strong one (±0.3)
    board = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2 * 2.0 - 1
    labels = torch.tensor([0, 1] * 10)
    images = torch.stack([0.5 + (0.3 if y else 0.05) * board for y in labels]).unsqueeze(1)
    model = _ContrastDetector()
    r = robustness(model, TensorImageDataset(images, labels, INFO), ["contrast", "blur"], (1, 2, 3))
    assert r["clean"] == 100.0
    acc = r["accuracy"]["contrast"]
    # factor 0.4 keeps 0.12 of spread (< 0.15): every strong board reads as faint
    assert acc[1] == acc[2] == acc[3] == 50.0
    assert r["accuracy"]["blur"][3] == 50.0  # a 1-pixel checkerboard does not survive sigma 1.2
    assert r["mean_corrupted"] < r["clean"] and r["relative"] == pytest.approx(r["mean_corrupted"] / 100)


def test_bad_arguments():
    images, labels = _data(4)
    ds = TensorImageDataset(images, labels, INFO)
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness(_model(), ds, ["fog"])
    with pytest.raises(ValueError, match="severity"):
        robustness(_model(), ds, ["blur"], (4,))
    with pytest.raises(ValueError, match="normalisation"):
        robustness(_model(), torch.utils.data.TensorDataset(images, labels), ["blur"])
