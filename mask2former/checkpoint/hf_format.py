"""Weight names of Hugging Face ``transformers``' ``Mask2FormerForUniversalSegmentation`` <-> ours.

Our names are the published Mask2Former's (Cheng et al., CVPR 2022; the model-zoo ``.pkl``
layout). ``transformers`` stores the same network with other names, one to one, except for two
fused projections that it keeps as three matrices:

* Swin ``attn.qkv`` [3C, C] = rows of ``attention.self.{query,key,value}`` [C, C] stacked in that
  order (bias likewise);
* Transformer-decoder self-attention ``in_proj_weight`` [3D, D] = ``self_attn.{q,k,v}_proj``
  stacked in that order (bias likewise). Its cross-attention keeps ``in_proj_weight``.

The Hugging Face side is written in the layout of the files on the hub (what ``save_pretrained``
writes, e.g. ``attention.self.query``, ``intermediate.dense``). Read in, the module names of
``transformers`` >= 5 (``attention.q_proj``, ``mlp.fc1``, ``swin.`` prefix, ...), numbered
``hidden_states_norms.N`` and a missing ``model.`` prefix are accepted too.

Not converted: ``relative_position_index`` (a constant of the window size: dropped towards
Hugging Face, recomputed towards us) and the unused final ``swin.layernorm`` of ``SwinBackbone``
(dropped; written as an identity LayerNorm towards Hugging Face so the file is complete).
"""

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..modeling.backbone.swin import relative_position_index

__all__ = ["hf_to_original", "original_to_hf"]

_PIXEL = "model.pixel_level_module"
_SWIN = f"{_PIXEL}.encoder"
_TRANSFORMER = "model.transformer_module"
_BLOCK = "backbone.layers.{i}.blocks.{j}."
_HF_BLOCK = f"{_SWIN}.encoder.layers.{{i}}.blocks.{{j}}."
_ENC = "sem_seg_head.pixel_decoder.transformer.encoder.layers.{i}."
_HF_ENC = f"{_PIXEL}.decoder.encoder.layers.{{i}}."
_PRED = "sem_seg_head.predictor."
_HF_DEC = f"{_TRANSFORMER}.decoder.layers.{{i}}."

# (our prefix, hub prefix); {i}, {j} stand for layer numbers, the rest of the key is kept.
_RENAMES: List[Tuple[str, str]] = [
    ("backbone.patch_embed.proj.", f"{_SWIN}.embeddings.patch_embeddings.projection."),
    ("backbone.patch_embed.norm.", f"{_SWIN}.embeddings.norm."),
    (_BLOCK + "norm1.", _HF_BLOCK + "layernorm_before."),
    (
        _BLOCK + "attn.relative_position_bias_table",
        _HF_BLOCK + "attention.self.relative_position_bias_table",
    ),
    (_BLOCK + "attn.proj.", _HF_BLOCK + "attention.output.dense."),
    (_BLOCK + "norm2.", _HF_BLOCK + "layernorm_after."),
    (_BLOCK + "mlp.fc1.", _HF_BLOCK + "intermediate.dense."),
    (_BLOCK + "mlp.fc2.", _HF_BLOCK + "output.dense."),
    ("backbone.layers.{i}.downsample.", f"{_SWIN}.encoder.layers.{{i}}.downsample."),
    *((f"backbone.norm{s}.", f"{_SWIN}.hidden_states_norms.stage{s + 1}.") for s in range(4)),
    ("sem_seg_head.pixel_decoder.input_proj.", f"{_PIXEL}.decoder.input_projections."),
    ("sem_seg_head.pixel_decoder.transformer.level_embed", f"{_PIXEL}.decoder.level_embed"),
    (_ENC + "self_attn.", _HF_ENC + "self_attn."),
    (_ENC + "norm1.", _HF_ENC + "self_attn_layer_norm."),
    (_ENC + "linear1.", _HF_ENC + "fc1."),
    (_ENC + "linear2.", _HF_ENC + "fc2."),
    (_ENC + "norm2.", _HF_ENC + "final_layer_norm."),
    ("sem_seg_head.pixel_decoder.mask_features.", f"{_PIXEL}.decoder.mask_projection."),
    ("sem_seg_head.pixel_decoder.adapter_{i}.weight", f"{_PIXEL}.decoder.adapter_{{i}}.0.weight"),
    ("sem_seg_head.pixel_decoder.adapter_{i}.norm.", f"{_PIXEL}.decoder.adapter_{{i}}.1."),
    ("sem_seg_head.pixel_decoder.layer_{i}.weight", f"{_PIXEL}.decoder.layer_{{i}}.0.weight"),
    ("sem_seg_head.pixel_decoder.layer_{i}.norm.", f"{_PIXEL}.decoder.layer_{{i}}.1."),
    (
        _PRED + "transformer_self_attention_layers.{i}.self_attn.out_proj.",
        _HF_DEC + "self_attn.out_proj.",
    ),
    (_PRED + "transformer_self_attention_layers.{i}.norm.", _HF_DEC + "self_attn_layer_norm."),
    (_PRED + "transformer_cross_attention_layers.{i}.multihead_attn.", _HF_DEC + "cross_attn."),
    (_PRED + "transformer_cross_attention_layers.{i}.norm.", _HF_DEC + "cross_attn_layer_norm."),
    (_PRED + "transformer_ffn_layers.{i}.linear1.", _HF_DEC + "fc1."),
    (_PRED + "transformer_ffn_layers.{i}.linear2.", _HF_DEC + "fc2."),
    (_PRED + "transformer_ffn_layers.{i}.norm.", _HF_DEC + "final_layer_norm."),
    (_PRED + "decoder_norm.", f"{_TRANSFORMER}.decoder.layernorm."),
    (_PRED + "query_feat.", f"{_TRANSFORMER}.queries_features."),
    (_PRED + "query_embed.", f"{_TRANSFORMER}.queries_embedder."),
    (_PRED + "level_embed.", f"{_TRANSFORMER}.level_embed."),
    (_PRED + "input_proj.", f"{_TRANSFORMER}.input_projections."),
    (_PRED + "class_embed.", "class_predictor."),
    (
        _PRED + "mask_embed.layers.{i}.",
        f"{_TRANSFORMER}.decoder.mask_predictor.mask_embedder.{{i}}.0.",
    ),
    ("criterion.empty_weight", "criterion.empty_weight"),
]

# (our key, three hub keys) of the fused projections; {p} is "weight" or "bias".
_FUSED: List[Tuple[str, Tuple[str, str, str]]] = [
    (
        _BLOCK + "attn.qkv.{p}",
        tuple(_HF_BLOCK + f"attention.self.{part}.{{p}}" for part in ("query", "key", "value")),
    ),
    (
        _PRED + "transformer_self_attention_layers.{i}.self_attn.in_proj_{p}",
        tuple(_HF_DEC + f"self_attn.{part}_proj.{{p}}" for part in "qkv"),
    ),
]

# Other spellings of hub names (transformers >= 5 module names, older prefixes) -> hub layout.
# A replacement may be a function of the match (re.sub semantics).
_HF_ALIASES = [
    (r"^(pixel_level_module|transformer_module)\.", r"model.\1."),
    (rf"^{re.escape(_SWIN)}\.(swin|model)\.", f"{_SWIN}."),
    (  # MaskFormer-style 0-based norms -> stage1..stage4
        rf"^({re.escape(_SWIN)}\.hidden_states_norms\.)(\d)\.",
        lambda m: f"{m.group(1)}stage{int(m.group(2)) + 1}.",
    ),
    (r"(\.blocks\.\d+\.attention)\.q_proj\.", r"\1.self.query."),
    (r"(\.blocks\.\d+\.attention)\.k_proj\.", r"\1.self.key."),
    (r"(\.blocks\.\d+\.attention)\.v_proj\.", r"\1.self.value."),
    (r"(\.blocks\.\d+\.attention)\.o_proj\.", r"\1.output.dense."),
    (r"(\.blocks\.\d+\.attention)\.relative_position_bias\.", r"\1.self."),
    (r"(\.blocks\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."),
    (r"(\.blocks\.\d+)\.mlp\.fc2\.", r"\1.output.dense."),
]
_HF_UNUSED = re.compile(rf"^{re.escape(_SWIN)}\.layernorm\.|\.relative_position_index$")
_PLACEHOLDERS = {"{i}": r"(?P<i>\d+)", "{j}": r"(?P<j>\d+)", "{p}": r"(?P<p>weight|bias)$"}


def _pattern(template: str) -> "re.Pattern[str]":
    """Regex matching the start of a key against ``template`` with its placeholders."""
    regex = re.escape(template)
    for placeholder, group in _PLACEHOLDERS.items():
        regex = regex.replace(re.escape(placeholder), group)
    return re.compile(regex)


_TO_HF = [(_pattern(ours), hf) for ours, hf in _RENAMES]
_FROM_HF = [(_pattern(hf), ours) for ours, hf in _RENAMES]
_FUSED_TO_HF = [(_pattern(ours), hf) for ours, hf in _FUSED]
_FUSED_FROM_HF = [
    (_pattern(hf), (index, ours)) for ours, parts in _FUSED for index, hf in enumerate(parts)
]


def _first_match(key: str, rules):
    """``(match, template)`` of the first rule whose pattern matches the start of ``key``."""
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return match, template
    return None, None


def _rename(key: str, rules) -> Optional[str]:
    match, template = _first_match(key, rules)
    return None if match is None else template.format(**match.groupdict()) + key[match.end():]


def _normalise_hf_key(key: str) -> str:
    for pattern, replacement in _HF_ALIASES:
        key = re.sub(pattern, replacement, key)
    return key


def original_to_hf(
    state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Rename (and split) a state dict of ours into the hub layout of ``transformers``.

    Args:
        state_dict: our names -> tensors (any dtype; numpy arrays are converted), e.g. a model-zoo
            ``.pkl``'s ``"model"`` entry or ``model.state_dict()`` of a Swin Mask2Former.
        source: named in errors.

    Returns:
        hub names -> contiguous tensors, for ``Mask2FormerForUniversalSegmentation``. The fused
        projections are split in 3 along dim 0; ``relative_position_index`` is left out and an
        identity ``swin.layernorm`` (weight 1, bias 0) is added.

    Raises:
        ValueError: a key that has no Hugging Face counterpart (e.g. a ResNet backbone's), or no
            Swin key at all.
    """
    out: Dict[str, torch.Tensor] = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        tensor = torch.as_tensor(value)
        if key.endswith(".relative_position_index"):
            continue
        match, parts = _first_match(key, _FUSED_TO_HF)
        if match is not None:
            for template, chunk in zip(parts, tensor.chunk(3, dim=0)):
                out[template.format(**match.groupdict())] = chunk.clone()
            continue
        name = _rename(key, _TO_HF)
        if name is None:
            unknown.append(key)
        else:
            out[name] = tensor.contiguous()
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} weights have no Hugging Face Mask2Former counterpart, e.g. "
            f"{unknown[:3]}; only Swin-backbone Mask2Former models "
            "(MultiScaleMaskedTransformerDecoder, MSDeformAttnPixelDecoder) convert"
        )
    final_norm = f"{_SWIN}.hidden_states_norms.stage4.weight"
    if final_norm not in out:
        raise ValueError(f"{source}: no Swin backbone weights (expected backbone.norm3.weight)")
    channels = out[final_norm].shape[0]
    out[f"{_SWIN}.swin.layernorm.weight"] = torch.ones(channels, dtype=out[final_norm].dtype)
    out[f"{_SWIN}.swin.layernorm.bias"] = torch.zeros(channels, dtype=out[final_norm].dtype)
    return out


def hf_to_original(
    state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Rename (and fuse) a ``Mask2FormerForUniversalSegmentation`` state dict into our names.

    Args:
        state_dict: hub or ``transformers`` module names -> tensors.
        source: named in errors.

    Returns:
        our names -> tensors, in the order of ``state_dict``, with each Swin block's
        ``relative_position_index`` [ws², ws²] (int64) recomputed from its bias table
        [(2 ws - 1)², heads].

    Raises:
        ValueError: keys that are not Mask2Former-with-Swin weights (listed), or a fused
            projection with a part missing.
    """
    out: Dict[str, torch.Tensor] = OrderedDict()
    parts: Dict[str, Dict[int, torch.Tensor]] = {}
    unknown = []
    for raw_key, value in state_dict.items():
        key = _normalise_hf_key(raw_key)
        if _HF_UNUSED.search(key):
            continue
        tensor = torch.as_tensor(value)
        match, fused = _first_match(key, _FUSED_FROM_HF)
        if match is not None:
            index, template = fused
            name = template.format(**match.groupdict())
            out.setdefault(name, None)
            parts.setdefault(name, {})[index] = tensor
            continue
        name = _rename(key, _FROM_HF)
        if name is None:
            unknown.append(raw_key)
            continue
        out[name] = tensor
        if name.endswith("attn.relative_position_bias_table"):
            window = (int(round(tensor.shape[0] ** 0.5)) + 1) // 2
            out[name[: -len("relative_position_bias_table")] + "relative_position_index"] = (
                relative_position_index(window)
            )
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} weights are not those of a Swin "
            f"Mask2FormerForUniversalSegmentation, e.g. {unknown[:3]}"
        )
    for name, pieces in parts.items():
        if sorted(pieces) != [0, 1, 2]:
            raise ValueError(
                f"{source}: {name} needs its q, k and v parts; found parts {sorted(pieces)}"
            )
        out[name] = torch.cat([pieces[0], pieces[1], pieces[2]], dim=0)
    return out
