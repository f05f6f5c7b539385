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


class _ResidualSublayer(nn.Module):
    """Shared residual wrapper: post-norm ``norm(x + drop(f(x)))`` or pre-norm ``x + drop(f(norm(x)))``.

    Subclasses build their own sublayer first, then call :meth:`_finish` (which adds ``norm`` and
    ``dropout``, so the state-dict order is the published one: sublayer weights, then ``norm``).
    """

    def _finish(self, d_model: int, dropout: float, normalize_before: bool) -> None:
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        # Xavier-uniform for every weight matrix, as the published model was initialised.
        for weight in (p for p in self.parameters() if p.dim() > 1):
            nn.init.xavier_uniform_(weight)

    def _residual(self, tgt: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.normalize_before:
            return tgt + self.dropout(sublayer(self.norm(tgt)))
        return self.norm(tgt + self.dropout(sublayer(tgt)))


def _with_pos(tensor: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    """``tensor + pos``, or ``tensor`` when there is no positional embedding."""
    if pos is not None:
        return tensor + pos
    return tensor


class SelfAttentionLayer(_ResidualSublayer):
    """Multi-head self-attention among the queries; the positional embedding ``query_pos`` is
    added to queries and keys, not to values.

    Submodules (state-dict names, fixed by the published checkpoints): ``self_attn``
    (``nn.MultiheadAttention``), ``norm``.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim=d_model, num_heads=nhead, dropout=dropout)
        self._finish(d_model, dropout, normalize_before)

    def forward(
        self,
        tgt: torch.Tensor,
        tgt_mask: Optional[torch.Tensor] = None,
        tgt_key_padding_mask: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tgt, query_pos: [Q, N, C] -> [Q, N, C]. ``tgt_mask``: bool [N*heads, Q, Q] or [Q, Q],
        True = not attended."""

        def attend(x: torch.Tensor) -> torch.Tensor:
            queries = _with_pos(x, query_pos)
            return self.self_attn(
                queries, queries, x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                need_weights=False,
            )[0]

        return self._residual(tgt, attend)


class CrossAttentionLayer(_ResidualSublayer):
    """Multi-head attention from the queries to image features (``memory``), with an optional
    attention mask (the "masked attention" of Mask2Former, Eq. 2).

    Submodules (state-dict names, fixed by the published checkpoints): ``multihead_attn``
    (``nn.MultiheadAttention``), ``norm``.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(embed_dim=d_model, num_heads=nhead, dropout=dropout)
        self._finish(d_model, dropout, normalize_before)

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
        [N*heads, Q, HW], or [Q, HW] shared by all images and heads; True = not attended.
        Returns [Q, N, C]."""
        keys = _with_pos(memory, pos)

        def attend(x: torch.Tensor) -> torch.Tensor:
            queries = _with_pos(x, query_pos)
            padding = memory_key_padding_mask
            # need_weights=False: the fused attention kernel, no [N, Q, HW] head-averaged weights
            attended, _ = self.multihead_attn(
                queries, keys, memory, attn_mask=memory_mask, key_padding_mask=padding,
                need_weights=False,
            )
            return attended

        return self._residual(tgt, attend)


class FFNLayer(_ResidualSublayer):
    """Position-wise feed-forward block ``linear2(act(linear1(x)))``.

    Submodules (state-dict names, fixed by the published checkpoints): ``linear1``, ``linear2``,
    ``norm``.
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
        self.activation = _activation(activation)
        self.linear1 = nn.Linear(in_features=d_model, out_features=dim_feedforward)
        self.linear2 = nn.Linear(in_features=dim_feedforward, out_features=d_model)
        self._finish(d_model, dropout, normalize_before)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """[Q, N, C] -> [Q, N, C]."""
        return self._residual(tgt, lambda x: self.linear2(self.dropout(self.activation(self.linear1(x)))))


class MLP(nn.Module):
    """``num_layers`` linear layers (``layers.0`` ... ``layers.{num_layers-1}``) with ReLU between
    them: [..., input_dim] -> [..., output_dim]."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.layers
        for layer in hidden:
            x = F.relu(layer(x))
        return last(x)
