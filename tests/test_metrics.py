"""recall_distortion on a hand-made example."""
import math

import pytest
import torch

from tas.metrics import recall_distortion


def test_recall_distortion_hand_made():
    # 3 classes, 4 samples each. Teacher: class 0 4/4, class 1 3/4, class 2 2/4 -> accuracy 9/12 = 75%.
    labels = [0] * 4 + [1] * 4 + [2] * 4
    teacher = [0, 0, 0, 0, 1, 1, 1, 0, 2, 2, 0, 1]
    # Slim: class 0 4/4 (x1), class 1 3/4 (x1), class 2 1/4 (x0.5) -> accuracy 8/12.
    slim = [0, 0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 1]
    r = recall_distortion(teacher, slim, labels)
    assert r["classes"] == [0, 1, 2]
    assert r["teacher_recall"] == pytest.approx([100.0, 75.0, 50.0])
    assert r["slim_recall"] == pytest.approx([100.0, 75.0, 25.0])
    assert r["teacher_accuracy"] == pytest.approx(75.0) and r["slim_accuracy"] == pytest.approx(200 / 3)
    assert r["relative_change"] == pytest.approx([0.0, 0.0, -0.5])
    # class 1's recall equals the accuracy: it counts as "above"
    assert r["below"] == [2] and r["above"] == [0, 1]
    assert r["mean_change_below"] == pytest.approx(-0.5) and r["mean_change_above"] == pytest.approx(0.0)
    assert r["intensification"] == pytest.approx(0.5) and r["intensified"] is True
    acc_ratio = (200 / 3) / 75
    assert r["normalized_change"] == pytest.approx([1 / acc_ratio, 1 / acc_ratio, 0.5 / acc_ratio])
    assert r["num_samples"] == 12


def test_recall_distortion_not_intensified_and_logits():
    labels = torch.tensor([0, 0, 1, 1])
    teacher = torch.tensor([0, 0, 1, 0])          # recalls 100, 50; accuracy 75
    slim_ids = torch.tensor([0, 1, 1, 1])         # recalls 50, 100: the easy class lost
    slim_logits = torch.nn.functional.one_hot(slim_ids, 2).float()
    r = recall_distortion(teacher, slim_logits, labels)
    assert r["relative_change"] == pytest.approx([-0.5, 1.0])
    assert r["mean_change_below"] == pytest.approx(1.0) and r["mean_change_above"] == pytest.approx(-0.5)
    assert r["intensified"] is False and r["intensification"] == pytest.approx(-1.5)


def test_recall_distortion_edge_cases():
    # a class the teacher never gets right has no relative change and is left out of the means
    r = recall_distortion([0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1])
    assert r["teacher_recall"] == [100.0, 0.0] and r["relative_change"][1] is None
    assert r["below"] == [1] and r["mean_change_below"] is None and r["intensified"] is False
    # absent classes are not reported
    r = recall_distortion([0, 2], [0, 2], [0, 2], num_classes=4)
    assert r["classes"] == [0, 2] and r["intensification"] is None
    assert math.isclose(r["teacher_accuracy"], 100.0)
    with pytest.raises(ValueError, match="differ in length"):
        recall_distortion([0], [0, 1], [0, 1])
