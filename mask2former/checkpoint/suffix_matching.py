"""Name matching for checkpoints flagged ``"matching_heuristics": True`` (Detectron2's convention).

Such files (ImageNet-pretrained backbones converted by ``tools/convert-*-to-d2.py``) name their
weights without the model's nesting, e.g. ``res2.0.conv1.weight`` for the model's
``backbone.res2.0.conv1.weight``. Each model key takes the checkpoint key that is its longest
dotted suffix; checkpoint keys that match nothing are kept (and reported as unexpected).
"""

import logging
from collections import OrderedDict
from typing import Iterable, Mapping

__all__ = ["align_by_suffix"]


def align_by_suffix(model_keys: Iterable[str], checkpoint_state: Mapping) -> "OrderedDict":
    """Rename the keys of ``checkpoint_state`` to the model keys they are dotted suffixes of.

    Args:
        model_keys: the model's state-dict keys.
        checkpoint_state: ``{name: tensor or array}`` from the checkpoint.

    Returns:
        A new ordered dict with the matched entries under model names, then the unmatched ones.

    Raises:
        ValueError: one checkpoint key is the best match of several model keys.
    """
    matched_by = {}
    aligned = OrderedDict()
    for model_key in sorted(model_keys):
        parts = model_key.split(".")
        candidates = (".".join(parts[i:]) for i in range(len(parts)))  # longest suffix first
        checkpoint_key = next((c for c in candidates if c in checkpoint_state), None)
        if checkpoint_key is None:
            continue
        if checkpoint_key in matched_by:
            raise ValueError(
                f"Checkpoint key {checkpoint_key!r} matches both "
                f"{matched_by[checkpoint_key]!r} and "
                f"{model_key!r} of the model; rename it in the checkpoint to disambiguate"
            )
        matched_by[checkpoint_key] = model_key
        aligned[model_key] = checkpoint_state[checkpoint_key]
    for key, value in checkpoint_state.items():
        if key not in matched_by:
            aligned[key] = value
    logging.getLogger(__name__).info(
        f"Matched {len(matched_by)} of {len(checkpoint_state)} checkpoint keys to model keys "
        "by suffix"
    )
    return aligned
