"""Building blocks of the masked-attention Transformer decoder (Cheng et al., CVPR 2022, Sec. 3.2).

All layers use the sequence-first layout of ``nn.MultiheadAttention``: queries are [Q, N, C],
memories (flattened image features) [HW, N, C]. Each layer is residual and uses post-norm
(``x = norm(x + f(x))``) by default, or pre-norm (``x = x + f(norm(x))``) when
``normalize_before=True``.
"""
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``"relu"``, ``"gelu"`` or ``"glu"`` as a function; ``ValueError`` for any other name."""
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if name not in table:
        raise ValueError(f"activation should be one of {sorted(table)}, not {name!r}")
    return table[name]


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _with_pos(tensor: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention among the queries; the positional embedding ``query_pos`` is
    added to queries and keys, not to values.

    Submodules (state-dict names): ``self_attn`` (``nn.MultiheadAttention``), ``norm``.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        tgt_mask: Optional[torch.Tensor] = None,
        tgt_key_padding_mask: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt, query_pos: [Q, N, C] -> [Q, N, C]. ``tgt_mask``: bool [N*heads, Q, Q] or [Q, Q],
        True = not attended."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        out = self.self_attn(q, k, value=x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Multi-head attention from the queries to image features (``memory``), with an optional
    attention mask (the "masked attention" of Mask2Former, Eq. 2).

    Submodules (state-dict names): ``multihead_attn`` (``nn.MultiheadAttention``), ``norm``.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt, query_pos: [Q, N, C]; memory, pos: [HW, N, C]; ``memory_mask``: bool
        [N*heads, Q, HW], True = not attended. Returns [Q, N, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Position-wise feed-forward block ``linear2(act(linear1(x)))``.

    Submodules (state-dict names): ``linear1``, ``linear2``, ``norm``.
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """[Q, N, C] -> [Q, N, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.linear2(self.dropout(self.activation(self.linear1(x))))
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` linear layers (``layers.0`` ... ``layers.{num_layers-1}``) with ReLU between
    them: [..., input_dim] -> [..., output_dim]."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x
