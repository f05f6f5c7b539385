"""Masked-attention multi-scale Transformer decoder of Mask2Former (Cheng et al., CVPR 2022, Sec. 3.2).

Learnable queries attend, layer by layer and round-robin over three feature scales (coarsest
first), to the pixel-decoder features. Cross-attention is *masked*: each query only attends to
pixels where its mask predicted by the previous layer has probability >= 0.5 (Eq. 2). Class logits
and mask logits are predicted from the learnable queries before the first layer and after every
layer (deep supervision).

In eval mode only what is returned is computed (unless ``return_aux_outputs`` is set): the earlier
layers' masks only at the attended level's resolution, for the attention masks, and no attention
mask after the last layer. The returned outputs are the same either way.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, c2_xavier_fill
from ...layers.position_encoding import PositionEmbeddingSine
from ...utils.registry import TRANSFORMER_DECODER_REGISTRY
from ...utils.tracing import eager_inference
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["MultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's Transformer decoder (module ``sem_seg_head.predictor`` of the published model).

    State-dict layout: ``transformer_{self,cross}_attention_layers.i``, ``transformer_ffn_layers.i``,
    ``decoder_norm``, ``query_feat``, ``query_embed``, ``level_embed``, ``input_proj.{0,1,2}``
    (1x1 convs, parameter-free when not needed), ``class_embed``, ``mask_embed.layers.{0,1,2}``.
    """

    # Version 2 is the current key layout; saving it into ``_metadata`` tells the original
    # implementation not to rename keys when it loads checkpoints written by this one.
    _version = 2

    num_feature_levels = 3

    #: In eval mode, also return ``aux_outputs`` (the earlier layers' predictions at stride 4), at
    #: the cost of computing them; training always returns them (deep supervision).
    return_aux_outputs = False

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels C_in of each of the three multi-scale input features.
            mask_classification: must be True (the model classifies masks).
            num_classes: number of classes K; the class head predicts K+1 logits (last = "no object").
            hidden_dim: Transformer width C.
            num_queries: number of queries Q.
            nheads: attention heads.
            dim_feedforward: hidden width of the FFN blocks.
            dec_layers: number of Transformer layers L (config DEC_LAYERS - 1).
            pre_norm: pre-LayerNorm residual blocks instead of post-norm.
            mask_dim: channels of the per-pixel embeddings the masks are predicted from.
            enforce_input_project: use 1x1 input projections even when ``in_channels == hidden_dim``.

        Raises:
            ValueError: ``mask_classification`` is False.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask_classification=True")
        self.mask_classification = mask_classification
        # The attribute names and their order below are those of the published state dict.
        width = hidden_dim
        self.pe_layer = PositionEmbeddingSine(width // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers

        def stack(make_block) -> nn.ModuleList:
            return nn.ModuleList(make_block() for _ in range(dec_layers))

        block = {"dropout": 0.0, "normalize_before": pre_norm}
        self.transformer_self_attention_layers = stack(lambda: SelfAttentionLayer(width, nheads, **block))
        self.transformer_cross_attention_layers = stack(lambda: CrossAttentionLayer(width, nheads, **block))
        self.transformer_ffn_layers = stack(lambda: FFNLayer(width, dim_feedforward, **block))
        self.decoder_norm = nn.LayerNorm(width)

        self.num_queries = num_queries
        # Learnable query features (the decoder's input) and query positions, Q x C each.
        self.query_feat, self.query_embed = (nn.Embedding(num_queries, width) for _ in range(2))

        self.level_embed = nn.Embedding(self.num_feature_levels, width)
        needs_projection = enforce_input_project or in_channels != width
        self.input_proj = nn.ModuleList(
            _input_projection(in_channels, width) if needs_projection else nn.Sequential()
            for _ in range(self.num_feature_levels)
        )
        self.class_embed = nn.Linear(width, num_classes + 1)
        self.mask_embed = MLP(width, width, mask_dim, num_layers=3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool):
        if cfg.MODEL.MASK_FORMER.DEC_LAYERS < 1:
            raise ValueError(
                f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {cfg.MODEL.MASK_FORMER.DEC_LAYERS}"
            )
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
            "num_queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            "nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "dim_feedforward": cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction on the learnable queries as a layer, so that the
            # number of supervised predictions (L + 1) equals DEC_LAYERS.
            "dec_layers": cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1,
            "pre_norm": cfg.MODEL.MASK_FORMER.PRE_NORM,
            "enforce_input_project": cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def forward(self, x: Sequence[torch.Tensor], mask_features: torch.Tensor) -> Dict[str, object]:
        """
        Args:
            x: three feature maps [N, C_in, H_l, W_l], coarsest first.
            mask_features: per-pixel embeddings [N, mask_dim, H, W] (stride 4).

        Returns:
            dict with ``pred_logits`` [N, Q, K+1] and ``pred_masks`` [N, Q, H, W] (logits) of the
            last layer, and (in training, or with ``return_aux_outputs``) ``aux_outputs``: a list
            of L dicts with the same two keys for the learnable queries and the first L-1 layers,
            in order.

        Raises:
            ValueError: ``x`` does not hold exactly three feature maps.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"Expected {self.num_feature_levels} feature maps, got {len(x)}")
        src, pos, sizes = [], [], []
        for i, feature in enumerate(x):
            sizes.append(feature.shape[-2:])
            # [N, C, H, W] -> [HW, N, C]
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1))
            level = self.input_proj[i](feature).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))
        return self.decode(src, pos, sizes, mask_features)

    def decode(self, src, pos, sizes, mask_features: torch.Tensor) -> Dict[str, object]:
        """The masked-attention layers on flattened memory.

        Args:
            src, pos: per level, memory tokens and their position embeddings [S_l, N, C].
            sizes: per level, the (h, w) grid the next layer's attention mask is resized to.
            mask_features: per-pixel embeddings, as :meth:`forward_prediction_heads` takes them.

        Returns:
            the dict of :meth:`forward`; without ``aux_outputs`` in eval mode unless
            ``return_aux_outputs`` is set.
        """
        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)
        with_aux = self.training or self.return_aux_outputs
        levels = self.num_feature_levels

        predictions = []  # (class logits, mask logits) of the learnable queries and every layer
        attn_mask = self.next_attention_mask(output, mask_features, sizes[0], predictions if with_aux else None)
        for layer in range(self.num_layers):
            level = layer % levels
            # one image: the heads' shared [Q, S] mask, which attention broadcasts over the heads
            # (it then builds its additive float mask once, not once per head)
            memory_mask = attn_mask[0] if batch == 1 else attn_mask
            output = self.transformer_cross_attention_layers[layer](
                output, src[level], memory_mask=memory_mask, memory_key_padding_mask=None,
                pos=pos[level], query_pos=query_embed,
            )
            output = self.transformer_self_attention_layers[layer](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[layer](output)
            if layer + 1 < self.num_layers:
                attn_mask = self.next_attention_mask(
                    output, mask_features, sizes[(layer + 1) % levels], predictions if with_aux else None
                )
        predictions.append(self.forward_prediction_heads(output, mask_features, None)[:2])

        result = {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1]}
        if with_aux:
            result["aux_outputs"] = [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]
        return result

    def next_attention_mask(
        self, output: torch.Tensor, mask_features: torch.Tensor, size: Tuple[int, int], predictions: Optional[list]
    ) -> torch.Tensor:
        """The attention mask [N*heads, Q, h*w] of the next layer, attending to the level of
        ``size`` = (h, w), from the queries [Q, N, C]. With ``predictions`` (a list) the layer's
        class and stride-4 mask logits are computed and appended to it; without, the masks are
        computed only at the pixels the resize reads (:meth:`resized_mask_logits`)."""
        if predictions is None:
            attn_mask = self.attention_mask(self.resized_mask_logits(output, mask_features, size))
        else:
            class_logits, mask_logits, attn_mask = self.forward_prediction_heads(output, mask_features, size)
            predictions.append((class_logits, mask_logits))
        return attn_mask

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_target_size: Optional[Tuple[int, int]]
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Class logits, mask logits and the next layer's attention mask from the queries.

        Args:
            output: query features [Q, N, C].
            mask_features: [N, mask_dim, H, W].
            attn_mask_target_size: (h, w) of the feature level the next layer attends to; None
                after the last layer (no attention mask).

        Returns:
            class logits [N, Q, K+1]; mask logits [N, Q, H, W]; attention mask bool
            [N*heads, Q, h*w] of :meth:`attention_mask` (True = not attended) from the bilinearly
            resized masks (None without a target size).
        """
        class_logits, mask_embedding = self.query_heads(output)
        mask_logits = mask_product(mask_embedding, mask_features)
        if attn_mask_target_size is None:
            return class_logits, mask_logits, None
        resized = F.interpolate(mask_logits, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        return class_logits, mask_logits, self.attention_mask(resized.flatten(2))

    def resized_mask_logits(
        self, output: torch.Tensor, mask_features: torch.Tensor, size: Tuple[int, int]
    ) -> torch.Tensor:
        """Mask logits [N, Q, h*w] bilinearly resized to ``size`` = (h, w), as
        :meth:`forward_prediction_heads` resizes them, computed on the pixels the resize reads.

        When the stride-4 grid is an even multiple f of (h, w) in both directions (inputs padded
        to the backbone's size divisibility), output pixel i reads input pixels f*i + f/2 - 1 and
        f*i + f/2 with weight 1/2 each (align_corners=False), so only those rows and columns of
        ``mask_features`` [N, mask_dim, H, W] enter the product; the same 2x-downsampling of them
        gives the same values. Other ratios take the full product.
        """
        _, mask_embedding = self.query_heads(output)
        mask_logits = mask_product(mask_embedding, attended_pixels(mask_features, size))
        return F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).flatten(2)

    def query_heads(self, output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class logits [N, Q, K+1] and mask embeddings [N, Q, mask_dim] of the queries [Q, N, C],
        after the decoder's final LayerNorm."""
        queries = self.decoder_norm(output).transpose(0, 1)
        return self.class_embed(queries), self.mask_embed(queries)

    def attention_mask(self, resized_mask_logits: torch.Tensor) -> torch.Tensor:
        """Masked attention (Eq. 2): from mask logits [N, Q, S] at the attended level, the bool
        mask [N*heads, Q, S] that is True (not attended) where the probability is < 0.5, except
        that a query whose mask covers no pixel attends everywhere (it would attend to nothing);
        the same for every head (computed once, then repeated), detached from the graph."""
        blocked = resized_mask_logits.sigmoid() < 0.5
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        n, q, s = blocked.shape
        # a view for one image (heads share the memory), a copy for a batch
        return blocked.unsqueeze(1).expand(n, self.num_heads, q, s).reshape(n * self.num_heads, q, s).detach()


def mask_product(mask_embedding: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Mask logits [N, Q, H, W]: the dot product of every query's mask embedding [N, Q, C] with
    every per-pixel embedding of ``mask_features`` [N, C, H, W] (``einsum("bqc,bchw->bqhw")``).

    Channels-last bfloat16 features (the CPU inference layout of the pixel decoder) are read in
    place by one matrix product per image, with the einsum's values on contiguous features: a
    batched bfloat16 product (einsum, bmm) would copy a channels-last operand on every call, 31 MB
    per call at 800x1216. Float32 batched products read it in place; float16 ones (no fast CPU
    kernel) sum in another order in a plain matrix product. Gradients, tracing and export take the
    einsum.
    """
    channels_last = not mask_features.is_contiguous() and mask_features.is_contiguous(
        memory_format=torch.channels_last
    )
    in_place = channels_last and mask_features.dtype == torch.bfloat16
    if not (in_place and eager_inference(mask_embedding, mask_features)):
        return torch.einsum("bqc,bchw->bqhw", mask_embedding, mask_features)
    (n, q, _), (height, width) = mask_embedding.shape, mask_features.shape[-2:]
    logits = mask_embedding.new_empty((n, q, height * width))
    for i in range(n):
        torch.mm(mask_embedding[i], mask_features[i].flatten(1), out=logits[i])
    return logits.view(n, q, height, width)


def attended_pixels(features: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """The pixels of ``features`` [..., H, W] that a bilinear (align_corners=False) resize to
    ``size`` = (h, w) reads, when H = f_y*h and W = f_x*w with even factors > 2: rows
    f_y*i + f_y/2 - 1 and f_y*i + f_y/2 and likewise the columns, as [..., 2h, 2w] (resizing that by
    2 gives the same values with the same weights 1/2). Otherwise ``features`` itself."""
    (height, width), (h, w) = features.shape[-2:], size
    factor_y, factor_x = height // h, width // w
    if (factor_y * h, factor_x * w) != (height, width) or factor_y % 2 or factor_x % 2 or min(factor_y, factor_x) <= 2:
        return features
    lead, y, x = features.shape[:-2], factor_y // 2 - 1, factor_x // 2 - 1
    blocks = features.view(*lead, h, factor_y, w, factor_x)
    return blocks[..., y : y + 2, :, x : x + 2].reshape(*lead, 2 * h, 2 * w)


def _input_projection(in_channels: int, width: int) -> nn.Module:
    """1x1 convolution to the decoder width, Caffe2 Xavier-initialised."""
    projection = Conv2d(in_channels, width, kernel_size=1)
    c2_xavier_fill(projection)
    return projection
