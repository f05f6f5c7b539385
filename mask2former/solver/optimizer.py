"""AdamW/SGD with Mask2Former's parameter groups and full-model gradient clipping."""
from typing import Any, Dict, List

import torch
from torch import nn

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def get_param_groups(model: nn.Module, *, base_lr: float, weight_decay: float, weight_decay_norm: float,
                     weight_decay_embed: float, backbone_multiplier: float) -> List[Dict[str, Any]]:
    """One parameter group per trainable parameter, as the published recipe sets them:

    - parameters of modules whose name contains ``backbone``: lr × ``backbone_multiplier`` (0.1);
    - Swin ``relative_position_bias_table`` / ``absolute_pos_embed``: no weight decay;
    - normalisation layers: ``weight_decay_norm``; ``nn.Embedding`` (queries, level embeddings):
      ``weight_decay_embed`` (both 0 in the published configs).
    """
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, decay = base_lr, weight_decay
            if "backbone" in module_name:
                lr *= backbone_multiplier
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                decay = 0.0
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Build ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD").

    Gradient clipping (``SOLVER.CLIP_GRADIENTS``) is applied by the trainer before each step, after
    unscaling under AMP; see :func:`clip_gradients`.

    Raises:
        ValueError: for an unknown ``SOLVER.OPTIMIZER``.
    """
    solver = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    if solver.OPTIMIZER == "ADAMW":
        return torch.optim.AdamW(groups, solver.BASE_LR)
    if solver.OPTIMIZER == "SGD":
        return torch.optim.SGD(groups, solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is not supported; expected 'ADAMW' or 'SGD'")


def clip_gradients(cfg, model: nn.Module) -> None:
    """Clip gradients as ``SOLVER.CLIP_GRADIENTS`` asks.

    ``full_model`` (Mask2Former's choice, 0.01): one L2 norm over all parameters; ``norm``/``value``:
    per parameter, as in Detectron2.

    Raises:
        ValueError: for an unknown ``CLIP_TYPE``.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return
    params = [p for p in model.parameters() if p.grad is not None]
    if clip.CLIP_TYPE == "full_model":
        torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE)
    elif clip.CLIP_TYPE == "norm":
        for p in params:
            torch.nn.utils.clip_grad_norm_(p, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.CLIP_TYPE == "value":
        torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    else:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}; expected 'full_model', 'norm' or 'value'"
        )
