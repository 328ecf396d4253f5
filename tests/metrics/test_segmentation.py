"""Metrics against hand computations on small arrays, including empty classes and both empty conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kvmonai.metrics import (
    CompetitionScoreMetric,
    JaccardMetric,
    SliceDiceMetric,
    competition_score,
    competition_scores,
    confusion_counts,
    hausdorff_normalized,
    jaccard_index,
    slice_dice,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """B=2 slices, C=3 classes, 2 x 3 pixels. Class 2 is absent everywhere."""
    p = torch.zeros(2, 3, 2, 3)
    g = torch.zeros(2, 3, 2, 3)
    p[0, 0, 0, :2] = 1  # class 0, slice 0: predicted 2 pixels, 1 of them right
    g[0, 0, 0, 0] = 1
    g[1, 0, 1, 1:] = 1  # class 0, slice 1: 2 pixels missed
    p[0, 1] = g[0, 1] = 1  # class 1: perfect
    p[1, 1, 0, 0] = g[1, 1, 0, 0] = 1
    return p, g


def test_confusion_counts_by_hand(pair):
    counts = confusion_counts(*pair)
    assert counts.shape == (2, 3, 3)
    assert counts[:, 0].sum(0).tolist() == [1, 1, 2]  # TP, FP, FN of class 0
    assert counts[:, 1].sum(0).tolist() == [7, 0, 0]
    assert counts[:, 2].sum(0).tolist() == [0, 0, 0]


def test_jaccard_by_hand(pair):
    # class 0: 1 / (1 + 1 + 2) = 0.25 with support 3; class 1: 7 / 7 = 1 with support 7; class 2: undefined
    assert jaccard_index(*pair).item() == pytest.approx((0.25 + 1.0) / 2)
    assert jaccard_index(*pair, reduction="weighted").item() == pytest.approx((0.25 * 3 + 1.0 * 7) / 10)
    per_class = jaccard_index(*pair, reduction="none")
    assert per_class[:2].tolist() == [0.25, 1.0] and math.isnan(per_class[2])
    assert jaccard_index(*pair, zero_division=0.0).item() == pytest.approx(1.25 / 3)
    assert jaccard_index(*pair, reduction="weighted", zero_division=0.0).item() == pytest.approx(0.775)
    assert math.isnan(jaccard_index(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).item())


def test_jaccard_metric_accumulates_like_one_batch(pair):
    p, g = pair
    metric = JaccardMetric()
    metric(p[:1], g[:1])
    metric([p[1]], [g[1]])  # a list of channel-first tensors, as MONAI evaluators pass
    assert metric.aggregate().item() == pytest.approx(0.625)
    assert metric.aggregate("weighted").item() == pytest.approx(0.775)
    metric.reset()
    with pytest.raises(ValueError, match="nothing accumulated"):
        metric.aggregate()
    with pytest.raises(ValueError, match="reduction"):
        JaccardMetric(reduction="micro")


def test_slice_dice_by_hand(pair):
    d = slice_dice(*pair)
    assert d.shape == (2, 3, 1)
    assert d[0, 0, 0].item() == pytest.approx(2 * 1 / (2 + 1))
    assert d[1, 0, 0].item() == 0.0  # truth only
    assert d[:, 1, 0].tolist() == [1.0, 1.0]
    assert torch.isnan(d[:, 2]).all()  # both empty
    metric = SliceDiceMetric()
    metric(*pair)
    assert metric.aggregate().item() == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)  # skip both-empty rows
    assert metric.aggregate(empty="perfect").item() == pytest.approx((2 / 3 + 0 + 1 + 1 + 1 + 1) / 6)
    per_class = metric.aggregate(reduction="none")
    assert per_class[:2].tolist() == pytest.approx([1 / 3, 1.0]) and math.isnan(per_class[2])
    assert metric.aggregate(empty="perfect", reduction="none").tolist() == pytest.approx([1 / 3, 1.0, 1.0])
    # an empty truth with a predicted organ counts as 0 under both conventions
    fp = SliceDiceMetric(empty="skip")
    fp(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert fp.aggregate().item() == 0.0
    with pytest.raises(ValueError, match="empty must be one of"):
        SliceDiceMetric(empty="ignore")


def _points(shape, *voxels):
    v = torch.zeros(1, 1, *shape, dtype=torch.bool)
    for x in voxels:
        v[(0, 0, *x)] = True
    return v


def test_hausdorff_by_hand():
    shape = (4, 5, 3)
    diag = math.sqrt(4**2 + 5**2 + 3**2)
    p, g = _points(shape, (0, 0, 0)), _points(shape, (3, 4, 0))
    assert hausdorff_normalized(p, g).item() == pytest.approx(5 / diag)
    # slices count 1 apart (not 3 mm)
    assert hausdorff_normalized(p, _points(shape, (0, 0, 2))).item() == pytest.approx(2 / diag)
    # MLE-bench normalisation: coordinates / shape, distance / sqrt(3)
    unit = math.sqrt((3 / 4) ** 2 + (4 / 5) ** 2) / math.sqrt(3)
    assert hausdorff_normalized(p, g, normalize="unit_cube").item() == pytest.approx(unit)
    # symmetric: the farther of the two directed distances
    g2 = _points(shape, (0, 1, 0), (3, 4, 2))
    assert hausdorff_normalized(p, g2).item() == pytest.approx(math.sqrt(9 + 16 + 4) / diag)
    empty = torch.zeros_like(p)
    assert hausdorff_normalized(p, empty).item() == 1.0 and hausdorff_normalized(empty, g).item() == 1.0
    assert math.isnan(hausdorff_normalized(empty, empty).item())


def test_hausdorff_points_match_scipy():
    from scipy.spatial.distance import directed_hausdorff

    rng = np.random.default_rng(0)
    p, g = rng.random((2, 2, 9, 7, 5)) > 0.85, rng.random((2, 2, 9, 7, 5)) > 0.9
    ours = hausdorff_normalized(p, g)
    for b in range(2):
        for c in range(2):
            a, t = np.argwhere(p[b, c]), np.argwhere(g[b, c])
            d = max(directed_hausdorff(a, t)[0], directed_hausdorff(t, a)[0])
            assert ours[b, c].item() == pytest.approx(d / math.sqrt(81 + 49 + 25))


def test_points_and_surface_differ_for_nested_sets():
    """A solid 7^3 cube against its hollow shell: every shell voxel is in the cube (points: 3 voxels from the
    centre), while both boundaries coincide (surface: 0)."""
    solid = torch.zeros(1, 1, 9, 9, 9, dtype=torch.bool)
    solid[0, 0, 1:8, 1:8, 1:8] = True
    shell = solid.clone()
    shell[0, 0, 2:7, 2:7, 2:7] = False
    diag = math.sqrt(3 * 81)
    assert hausdorff_normalized(solid, shell).item() == pytest.approx(3 / diag)
    assert hausdorff_normalized(solid, shell, method="surface").item() == pytest.approx(0.0)


def test_competition_score_by_hand():
    """One volume, 3 classes, 2 slices: class 0 right, class 1 missed, class 2 absent from both."""
    p = torch.zeros(1, 3, 2, 2, 2)
    g = torch.zeros(1, 3, 2, 2, 2)
    p[0, 0, 0, 0, 0] = g[0, 0, 0, 0, 0] = 1
    g[0, 1, 0, 0, 1] = 1
    skip = competition_score(p, g)
    # rows: (c0,z0)=1, (c1,z1)=0, the rest both empty -> Dice 0.5; distances: c0 0, c1 1 -> 0.5
    assert skip["dice"] == pytest.approx(0.5) and skip["hausdorff"] == pytest.approx(0.5)
    assert skip["score"] == pytest.approx(0.4 * 0.5 + 0.6 * 0.5)
    assert math.isnan(skip["class_dice"][2]) and math.isnan(skip["class_hausdorff"][2])
    perfect = competition_score(p, g, empty="perfect")
    # rows: 1, 1, 1, 0, 1, 1 -> 5/6; distances 0, 1, 0 -> 1/3
    assert perfect["dice"] == pytest.approx(5 / 6) and perfect["hausdorff"] == pytest.approx(1 / 3)
    assert perfect["score"] == pytest.approx(0.4 * 5 / 6 + 0.6 * 2 / 3)
    assert perfect["class_dice"] == pytest.approx([1.0, 0.5, 1.0])
    both = competition_scores(p, g)
    assert both["skip"]["score"] == pytest.approx(skip["score"]) and both["perfect"] == perfect

    metric = CompetitionScoreMetric()
    metric(p, g)
    metric([p[0]], [g[0]])  # the same case-day again: the means are unchanged
    assert metric.aggregate().item() == pytest.approx(0.5)
    both = metric.aggregate_all()
    assert both["skip"]["score"] == pytest.approx(0.5)
    assert both["perfect"]["score"] == pytest.approx(0.4 * 5 / 6 + 0.6 * 2 / 3)


def test_perfect_prediction_and_bad_input():
    g = torch.zeros(2, 3, 6, 5, 4)
    g[0, 0, 1:3, 1:4, 1:3] = 1
    g[1, 2, 2:5, 0:2, 0:4] = 1
    assert competition_score(g, g)["score"] == pytest.approx(1.0)
    assert competition_score(g, g, empty="perfect")["score"] == pytest.approx(1.0)
    assert jaccard_index(g, g).item() == 1.0
    with pytest.raises(ValueError, match="same shape"):
        slice_dice(g, g[:1])
    with pytest.raises(ValueError, match=r"volumes \(B, C, H, W, D\)"):
        hausdorff_normalized(g[..., 0], g[..., 0])
    with pytest.raises(ValueError, match="method"):
        hausdorff_normalized(g, g, method="mean")
    with pytest.raises(ValueError, match="empty must be"):
        competition_score(g, g, empty="zero")


def test_score_from_parts_matches_competition_score():
    """A volume's parts (one metric call) give the same score as computing it from the masks, both conventions."""
    import torch

    from kvmonai.metrics import CompetitionScoreMetric, competition_score, score_from_parts

    g = torch.zeros(1, 3, 8, 9, 5, dtype=torch.bool)
    g[0, 0, 2:5, 2:6, 1:4] = True
    g[0, 2, 5:7, 1:3, 2] = True
    p = torch.zeros_like(g)
    p[0, 0, 3:6, 2:6, 1:3] = True
    p[0, 1, 0:2, 0:2, 4] = True
    parts = CompetitionScoreMetric()(p, g)
    for empty in ("skip", "perfect"):
        assert score_from_parts(parts, empty) == competition_score(p, g, empty=empty)


def test_pooled_dice_counts_all_voxels_together():
    from kvmonai.metrics import pooled_dice

    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.zeros_like(a)
    assert pooled_dice(a, b) == 1.0  # both empty
    a[0, :2, 0] = 1  # 2 voxels in channel 0
    b[0, :2, 0] = 1
    b[1, :2, 2] = 1  # 2 more, in another channel
    assert pooled_dice(a, b) == 2 * 2 / (2 + 4)
    with pytest.raises(ValueError, match="same shape"):
        pooled_dice(a, b[..., :2])
