"""Weights of the training losses: the RV counted more than the LV and myocardium.

The γ-Net trails its U-Net teacher most on the RV (held-out Dice 0.882 against 0.904,
docs/models.md), so ``train --rv-weight`` weighs the RV's Dice term and its labelled pixels in
the cross-entropy and the distillation; 1 gives the plain means (the losses as before).
"""
from ..labels import RV


def rv_pixel_weights(target, rv_weight):
    """Per-pixel loss weights: ``rv_weight`` where the label is the RV, 1 elsewhere; None when
    ``rv_weight`` is 1 (the plain, unweighted means)."""
    if rv_weight == 1.0:
        return None
    return 1.0 + (rv_weight - 1.0) * (target == RV).float()


def weighted_pixel_mean(values, weights):
    """The mean of per-pixel loss ``values``, weighted by ``weights`` (plain where None)."""
    return values.mean() if weights is None else (values * weights).sum() / weights.sum()


def foreground_dice_mean(dice_per_class, rv_weight=1.0):
    """Mean of the LV, MYO and RV Dice terms (classes 1-3), the RV's counting ``rv_weight``."""
    import torch

    w = torch.ones_like(dice_per_class)
    w[RV - 1] = rv_weight
    return (dice_per_class * w).sum() / w.sum()
