"""Hungarian matcher and set criterion (Mask2Former Sec. 3.3)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from mask2former.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost
from mask2former.modeling.point_sampling import get_uncertain_point_coords_with_randomness, uncertainty


def _criterion(num_classes=5, deep_supervision_layers=2, num_points=256):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    for i in range(deep_supervision_layers):
        weights.update({f"{k}_{i}": v for k, v in list(weights.items())[:3]})
    return SetCriterion(num_classes=num_classes, matcher=matcher, weight_dict=weights, eos_coef=0.1,
                        num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75)


def _targets(generator):
    masks = torch.zeros(3, 32, 32)
    masks[0, :16, :16] = 1
    masks[1, 16:, :] = 1
    masks[2, :16, 20:] = 1
    return {"labels": torch.tensor([4, 0, 2]), "masks": masks}


def test_pairwise_costs_equal_explicit_loops():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    targets = (torch.rand(3, 50, generator=g) > 0.5).float()
    dice, bce = batch_dice_cost(logits, targets), batch_sigmoid_ce_cost(logits, targets)
    for q, t in itertools.product(range(4), range(3)):
        p = logits[q].sigmoid()
        expected_dice = 1 - (2 * (p * targets[t]).sum() + 1) / (p.sum() + targets[t].sum() + 1)
        expected_bce = F.binary_cross_entropy_with_logits(logits[q], targets[t])
        assert torch.allclose(dice[q, t], expected_dice, atol=1e-6)
        assert torch.allclose(bce[q, t], expected_bce, atol=1e-6)


def test_matcher_recovers_planted_assignment():
    torch.manual_seed(0)
    target = _targets(None)
    # queries 5, 1, 3 predict targets 0, 1, 2; the other queries predict noise.
    pred_masks = torch.randn(1, 6, 32, 32)
    pred_logits = torch.randn(1, 6, 6)
    for query, t in zip([5, 1, 3], range(3)):
        pred_masks[0, query] = (target["masks"][t] * 2 - 1) * 10
        pred_logits[0, query, target["labels"][t]] = 10
    (rows, cols), = HungarianMatcher(2.0, 5.0, 5.0, num_points=512)(
        {"pred_logits": pred_logits, "pred_masks": pred_masks}, [target]
    )
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 5, 1: 1, 2: 3}


def test_matcher_and_criterion_handle_images_without_targets():
    torch.manual_seed(0)
    criterion = _criterion()
    pred_logits = torch.randn(2, 6, 6, requires_grad=True)
    pred_masks = torch.randn(2, 6, 8, 8, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    outputs = {"pred_logits": pred_logits, "pred_masks": pred_masks,
               "aux_outputs": [{"pred_logits": pred_logits, "pred_masks": pred_masks}] * 2}
    losses = criterion(outputs, [empty, empty])
    assert set(losses) == set(criterion.weight_dict)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(pred_logits.grad).all() and torch.isfinite(pred_masks.grad).all()
    # Every query must be pushed to "no object": cross-entropy with target index K everywhere.
    expected_ce = F.cross_entropy(pred_logits.detach().transpose(1, 2), torch.full((2, 6), 5),
                                  criterion.empty_weight)
    assert torch.allclose(losses["loss_ce"], expected_ce)


def test_losses_are_small_for_perfect_predictions_and_large_otherwise():
    torch.manual_seed(0)
    criterion = _criterion(deep_supervision_layers=0)
    target = _targets(None)
    good_masks = torch.full((1, 4, 32, 32), -20.0)
    good_logits = torch.full((1, 4, 6), -10.0)
    good_logits[..., 5] = 10.0
    for q in range(3):
        good_masks[0, q] = (target["masks"][q] * 2 - 1) * 20
        good_logits[0, q] = -10.0
        good_logits[0, q, target["labels"][q]] = 10.0
    good = criterion({"pred_logits": good_logits, "pred_masks": good_masks}, [target])
    bad = criterion({"pred_logits": torch.zeros(1, 4, 6), "pred_masks": torch.zeros(1, 4, 32, 32)}, [target])
    assert good["loss_ce"] < 0.01 < bad["loss_ce"]
    # Importance sampling puts 75% of the points on mask boundaries, where bilinear sampling of a
    # perfect prediction and of the target both give ~0.5 (BCE floor log 2 there), so the mask
    # losses of a perfect prediction are well below, but not near, zero.
    assert good["loss_mask"] < 0.7 * bad["loss_mask"]
    assert good["loss_dice"] < 0.3 * bad["loss_dice"]


def test_losses_are_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    criterion = _criterion(deep_supervision_layers=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = {"pred_logits": torch.randn(1, 4, 6).bfloat16(), "pred_masks": torch.randn(1, 4, 8, 8).bfloat16()}
        losses = criterion(outputs, [_targets(None)])
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_point_losses_match_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    p = logits.sigmoid()
    assert torch.allclose(dice_loss(logits, targets, 2.0), (1 - (2 * (p * targets).sum() + 1) / (p.sum() + 2 + 1)) / 2)
    assert torch.allclose(sigmoid_ce_loss(logits, targets, 2.0),
                          F.binary_cross_entropy_with_logits(logits, targets) / 2)


def test_importance_sampling_prefers_uncertain_points():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 64, 64), 10.0)
    logits[..., :, 32:] = 0.0  # right half maximally uncertain
    coords = get_uncertain_point_coords_with_randomness(logits, uncertainty, 1000, 3.0, 0.75)
    assert coords.shape == (1, 1000, 2)
    assert (coords[0, :750, 0] >= 0.49).all()
    with pytest.raises(ValueError):
        get_uncertain_point_coords_with_randomness(logits, uncertainty, 10, 0.5, 0.75)
