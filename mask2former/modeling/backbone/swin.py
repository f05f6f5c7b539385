"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021), in the dense-prediction form used by Mask2Former.

Self-attention runs inside non-overlapping ``window_size``² windows; every second block shifts
the windows by ``window_size // 2`` (a cyclic roll plus an attention mask keeping attention within
regions that were contiguous before the roll). Attention logits get a learned bias indexed by the
relative position of the two tokens (Sec. 3.2, Eq. 4). Stages are joined by 2x2 patch merging,
giving features at strides 4, 8, 16, 32 with channels C, 2C, 4C, 8C.

Parameter names equal Mask2Former's ``D2SwinTransformer`` (``patch_embed.proj``,
``layers.N.blocks.M.attn.relative_position_bias_table``, ``layers.N.downsample.reduction``,
``normN``), so official Swin checkpoints converted by
``tools/convert-pretrained-swin-model-to-d2.py`` and the Mask2Former model zoo load unchanged.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ...config import configurable
from ...layers import ShapeSpec
from ...utils.registry import BACKBONE_REGISTRY, register_once
from .backbone import Backbone

__all__ = ["D2SwinTransformer", "SwinTransformerBlock", "WindowAttention", "relative_position_index"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, zero a sample's residual branch with
    probability ``drop_prob`` and rescale the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout on [..., dim] tokens."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the relative-position bias table for every (query, key) pair of a window.

    Swin (Liu et al., ICCV 2021, Sec. 3.2): token ``a`` at (row, col) ``(ya, xa)`` and token ``b``
    at ``(yb, xb)`` of a ``window_size``² window read bias entry
    ``(ya - yb + ws - 1) * (2 ws - 1) + (xa - xb + ws - 1)``, tokens in row-major order.

    Returns:
        int64 tensor [ws², ws²] with values in ``[0, (2 ws - 1)² - 1]``.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # [2, ws²] (row, col) of each token
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # [2, ws², ws²], >= 0
    return rel[0] * (2 * window_size - 1) + rel[1]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of ``window_size``) -> [B * nW, window_size², C] windows,
    ordered batch-major, then row-major over the window grid."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * nW, window_size², C] -> [B, H, W, C]."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(
    Hp: int, Wp: int, window_size: int, shift_size: int, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive attention mask [nW, window_size², window_size²] in ``dtype`` (that of the
    attention logits it is added to) for windows shifted by ``shift_size`` on a padded Hp x Wp
    map: 0 between tokens of the same pre-roll region, -100 otherwise (the value of the original
    implementation, not -inf; exact in bfloat16 and float16)."""

    def regions(n: int) -> torch.Tensor:
        # 0 for [0, n - window), 1 for [n - window, n - shift), 2 for [n - shift, n).
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift_size).long()

    labels = regions(Hp)[:, None] * 3 + regions(Wp)[None, :]
    labels = window_partition(labels[None, :, :, None], window_size).squeeze(-1)
    mask = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill_(mask, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window with relative position bias:
    ``softmax(q kᵀ · scale + B + mask) v`` where ``B`` is gathered from a learned
    [(2Wh-1)(2Ww-1), heads] table by the (dy, dx) offset of each token pair.

    Args:
        dim: token channels.
        window_size: window side length (square windows).
        num_heads: attention heads; ``dim`` must be divisible by it.
        qkv_bias: learn a bias for the query/key/value projection.
        qk_scale: overrides the default scale ``head_dim ** -0.5`` when set.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B * nW, N = ws², C] windows; mask: [nW, N, N] additive or None -> [B * nW, N, C]."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B_, heads, N, head_dim]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None]
            attn = attn.view(B_, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(W-MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``.

    The map is zero-padded at the bottom/right to multiples of ``window_size`` (after ``norm1``) and
    cropped back; with ``shift_size > 0`` the windows are cyclically shifted (SW-MSA).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, H: int, W: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, H * W, C] tokens; attn_mask: [nW, ws², ws²] for the shifted windows."""
        B, L, C = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x).view(B, H, W, C)
        y = F.pad(y, (0, 0, 0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        Hp, Wp = y.shape[1:3]
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask=attn_mask if shift > 0 else None)
        y = window_reverse(y, ws, Hp, Wp)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :H, :W, :].reshape(B, H * W, C)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation -> LayerNorm(4C) -> Linear(4C, 2C), halving H and W
    (odd sizes zero-padded at the bottom/right): [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
        **block_kwargs,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                drop_path=drop_path[i],
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(
        self, x: torch.Tensor, H: int, W: int
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """[B, H*W, C] -> (output [B, H*W, C], merged [B, ceil(H/2)*ceil(W/2), 2C] or None)."""
        ws = self.window_size
        # ceil division without negative operands (ONNX's integer Div truncates instead of flooring)
        Hp, Wp = (H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws
        attn_mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, device=x.device, dtype=x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(blk, x, H, W, attn_mask, use_reentrant=False)
            else:
                x = blk(x, H, W, attn_mask)
        return x, (self.downsample(x, H, W) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size``² patches -> ``embed_dim`` channels (+ LayerNorm):
    [B, C_in, H, W] -> [B, embed_dim, ceil(H/p), ceil(W/p)] (input zero-padded at bottom/right)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        x = self.proj(F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p)))
        if self.norm is not None:
            N, C, Hf, Wf = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(N, C, Hf, Wf)
        return x


@register_once(BACKBONE_REGISTRY)
class D2SwinTransformer(Backbone):
    """Swin Transformer producing ``res2``..``res5`` (strides 4..32, channels C·2^i, each passed
    through its own LayerNorm ``norm{i}``), as Mask2Former's ``D2SwinTransformer``.

    Args:
        pretrain_img_size: image size of the pre-training; sets the absolute position embedding
            grid (``ape`` only; it is resized bicubically to the input).
        patch_size: patch side in pixels (4).
        in_chans: input channels.
        embed_dim: C, channels of res2 (96 T/S, 128 B, 192 L).
        depths, num_heads: blocks and heads per stage (T: 2-2-6-2 / 3-6-12-24; S, B, L: 2-2-18-2
            with heads 3/4/6 · 1-2-4-8).
        window_size: attention window side (7 for 224 pre-training, 12 for 384).
        mlp_ratio: MLP hidden width / C.
        qkv_bias, qk_scale: see :class:`WindowAttention`.
        drop_rate, attn_drop_rate: dropout after MLP/projection and on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        ape: add an absolute position embedding.
        patch_norm: LayerNorm after the patch embedding.
        out_features: subset of ``res2``..``res5`` to return.
        use_checkpoint: activation checkpointing of blocks during training.
    """

    @configurable
    def __init__(
        self,
        *,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths={list(depths)} and num_heads={list(num_heads)} differ in length"
            )
        num_layers = len(depths)
        self.num_features = [embed_dim * 2**i for i in range(num_layers)]
        self._out_feature_strides = {f"res{i + 2}": patch_size * 2**i for i in range(num_layers)}
        self._out_feature_channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}
        unknown = [f for f in out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(
                f"MODEL.SWIN.OUT_FEATURES {unknown} unknown; choose from "
                f"{list(self._out_feature_strides)}"
            )
        self._out_features = list(out_features)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            SwinStage(
                self.num_features[i],
                depths[i],
                num_heads[i],
                window_size,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < num_layers - 1,
                use_checkpoint=use_checkpoint,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
            )
            for i in range(num_layers)
        )
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        """Keyword arguments from ``MODEL.SWIN.*``; ``in_chans`` from ``input_shape.channels``."""
        swin = cfg.MODEL.SWIN
        return {
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "in_chans": input_shape.channels,
            "embed_dim": swin.EMBED_DIM,
            "depths": swin.DEPTHS,
            "num_heads": swin.NUM_HEADS,
            "window_size": swin.WINDOW_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
            "out_features": swin.OUT_FEATURES,
            "use_checkpoint": swin.USE_CHECKPOINT,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images [N, C, H, W] float (H, W multiples of 32 for aligned maps) ->
        {name: [N, C·2^i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))]} for the requested ``res{i+2}``."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes (N, C, H, W) input; got {tuple(x.shape)}")
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = {}
        for i, layer in enumerate(self.layers):
            out, x = layer(x, H, W)
            name = f"res{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.view(-1, H, W, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            H, W = (H + 1) // 2, (W + 1) // 2
        return outputs

    @property
    def size_divisibility(self) -> int:
        return 32
