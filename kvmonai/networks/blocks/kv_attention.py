"""Self-attention with a selectable variant: standard QKV, Borji's key-value (KV) and KV with 2D positions (KV+Pos).

References:
    A. Borji, "Key-Value Transformer", arXiv:2305.19129, 2023.
    D. Hwa, T. Holmes, K. Drechsler, "Exploring the Integration of Key-Value Attention Into Pure and Hybrid
    Transformers for Semantic Segmentation", BVM 2025, arXiv:2503.18862.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.utils import get_rel_pos_embedding_layer

from kvmonai.utils import check_option

__all__ = [
    "ATTENTION_VARIANTS",
    "KVPositionCorrection",
    "KVSelfAttention",
    "append_key_bias",
    "borji_positional_encoding",
    "key_position_bias",
    "positional_frequencies",
    "positional_split",
    "routed_sdpa",
    "sincos_embedding",
    "split_fused",
]

#: the attention variants every kvmonai network accepts
ATTENTION_VARIANTS: tuple[str, ...] = ("qkv", "kv", "kvpos")


def positional_split(pos_channels: int) -> tuple[int, int]:
    """Number of (query-index, key-index) channels in Borji's ``pos_channels``-channel 2D sinusoidal encoding.

    The encoding (``PositionalEncoding2D`` of the ``positional-encodings`` package, as used by Borji) gives each
    axis ``2 * ceil(m / 4)`` interleaved sin/cos channels, query axis first, and keeps the first ``m`` channels.

    Args:
        pos_channels: total number of channels ``m``.

    Returns:
        ``(query_channels, key_channels)``; for ``m = 50`` this is ``(26, 24)``.

    Raises:
        ValueError: if ``pos_channels`` is smaller than 1.
    """
    if pos_channels < 1:
        raise ValueError(f"pos_channels must be >= 1, got {pos_channels}.")
    per_axis = 2 * math.ceil(pos_channels / 4)
    query = min(per_axis, pos_channels)
    return query, pos_channels - query


def positional_frequencies(pos_channels: int) -> torch.Tensor:
    """Frequencies ``10000^(-2k / C')`` of one axis of Borji's encoding, ``C' = 2 ceil(m / 4)``; float64, (C'/2,)."""
    per_axis = 2 * math.ceil(pos_channels / 4)
    return 1.0 / (10000 ** (torch.arange(0, per_axis, 2, dtype=torch.float64) / per_axis))


def sincos_embedding(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Interleaved ``[sin(p f_0), cos(p f_0), sin(p f_1), ...]`` for each position: shape (n, 2 * len(inv_freq))."""
    angles = positions[:, None] * inv_freq[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


def borji_positional_encoding(num_tokens: int, pos_channels: int = 50) -> torch.Tensor:
    """The literal ``(n, n, m)`` positional tensor of Borji's KV+Pos attention.

    Entry ``[i, j, c]`` depends on the query index ``i`` for the first ``positional_split(m)[0]`` channels and on
    the key index ``j`` for the rest. It costs O(n^2 m) memory: :class:`KVSelfAttention` never builds it and uses the
    exact factorised form instead; this function exists to document and test that equivalence.

    Args:
        num_tokens: sequence length ``n``.
        pos_channels: number of channels ``m`` (Borji uses 50 for ViTs).

    Returns:
        float32 tensor of shape ``(num_tokens, num_tokens, pos_channels)``.

    Raises:
        ValueError: if ``num_tokens`` or ``pos_channels`` is smaller than 1.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
    positional_split(pos_channels)  # validates pos_channels
    inv_freq = positional_frequencies(pos_channels)
    emb = sincos_embedding(torch.arange(num_tokens, dtype=torch.float64), inv_freq)  # (n, 2 ceil(m/4))
    n, c = num_tokens, emb.shape[1]
    # channels [0, c) vary with the query index i (rows), [c, 2c) with the key index j (columns)
    full = torch.cat((emb[:, None, :].expand(n, n, c), emb[None, :, :].expand(n, n, c)), dim=-1)
    return full[..., :pos_channels].float().contiguous()


def append_key_bias(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor, channels: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold a per-key additive logit bias into the heads, so attention needs no mask.

    Appends ``channels`` channels to every head: the queries get ``[1, 0, ...]``, the keys ``[key_bias_j, 0, ...]``
    and the values zeros. Then ``q'.k'_j = q.k_j + key_bias_j`` for every query, and
    ``scaled_dot_product_attention(q', k', v', scale=s)[..., :d]`` equals attention with the additive mask
    ``s * key_bias``. SDPA keeps its fused kernels this way: an additive mask that needs a gradient sends it to the
    math path, with O(n^2) memory and several times the time at n = 4096. ``channels`` pads the head to a
    vector-friendly size; the fused CPU kernels need equal head sizes for q, k and v.

    Args:
        q: queries ``(B, heads, n_q, d)``.
        k: keys ``(B, heads, n_k, d)``.
        v: values ``(B, heads, n_k, d)``.
        key_bias: ``(n_k,)`` bias of each key, already divided by the attention scale.
        channels: appended channels (>= 1).

    Returns:
        the extended ``q``, ``k`` and ``v``.
    """
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    q_extra = torch.zeros(b, h, n_q, channels, dtype=q.dtype, device=q.device)
    q_extra[..., 0] = 1.0
    k_extra = torch.cat(
        (
            key_bias.to(k.dtype).view(1, 1, n_k, 1).expand(b, h, n_k, 1),
            torch.zeros(b, h, n_k, channels - 1, dtype=k.dtype, device=k.device),
        ),
        dim=-1,
    )
    v_extra = torch.zeros(b, h, n_k, channels, dtype=v.dtype, device=v.device)
    return torch.cat((q, q_extra), dim=-1), torch.cat((k, k_extra), dim=-1), torch.cat((v, v_extra), dim=-1)


def key_position_bias(
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_keys: int,
    pos_channels: int,
    inv_freq: Optional[torch.Tensor] = None,  # noqa: UP045
    check: bool = True,
) -> torch.Tensor:
    """Per-key logit bias ``g(j) + b`` of KV+Pos for ``num_keys`` keys, shape ``(num_keys,)``.

    Borji's correction collapses ``S[i, j] + P[i, j, c]`` over the ``m = pos_channels`` channels with one
    ``Linear(m, 1)`` (``weight`` ``(1, m)``, ``bias`` ``(1,)``). The channels of ``P`` that depend on the key index
    ``j`` give this bias (the query-index channels are constant along each softmax row); it equals
    ``borji_positional_encoding(n, m)[i, :num_keys, q:] @ weight[0, q:] + bias`` for any row ``i``, with
    ``q = positional_split(m)[0]``, but costs O(num_keys * m) and allows a different number of queries and keys.
    The bias ``b`` cancels in the softmax; it is kept in the sum so that every parameter takes part in the graph
    (``DistributedDataParallel`` requires it).

    Args:
        weight: the ``Linear(m, 1)`` weight, shape ``(1, m)``.
        bias: its bias, shape ``(1,)``.
        num_keys: number of keys ``n_k``.
        pos_channels: ``m``.
        inv_freq: :func:`positional_frequencies` of ``m`` on ``weight``'s device (a module keeps them as a buffer);
            computed here when ``None``.
        check: check ``num_keys``; modules pass ``False``, so that it may be a traced size.

    Returns:
        tensor of shape ``(num_keys,)`` with ``weight``'s dtype and device.

    Raises:
        ValueError: if ``num_keys`` or ``pos_channels`` is smaller than 1.
    """
    if check and num_keys < 1:
        raise ValueError(f"num_keys must be >= 1, got {num_keys}.")
    query_channels, key_channels = positional_split(pos_channels)
    if inv_freq is None:
        inv_freq = positional_frequencies(pos_channels).to(device=weight.device, dtype=torch.float32)
    positions = torch.arange(num_keys, device=inv_freq.device, dtype=inv_freq.dtype)
    emb = sincos_embedding(positions, inv_freq)[:, :key_channels].to(weight.dtype)
    return emb @ weight[0, query_channels:] + bias


class KVPositionCorrection(nn.Linear):
    """Borji's KV+Pos correction: the learned ``Linear(m, 1)`` over ``m`` sinusoidal position channels.

    Called as a module it is that ``Linear`` (the literal form ``w . (S + P) + b`` on an ``(..., m)`` tensor, as
    the tests use it). Attention layers use its exact factorised form instead: the logits are scaled by
    :meth:`temperature` (``sum_c w_c``) and shifted by :meth:`key_bias` (``g(j) + b``, :func:`key_position_bias`),
    in O(n) extra memory. It is initialised so that the layer starts as plain KV (temperature 1, zero key bias);
    Borji's default ``nn.Linear`` initialisation would start with a random temperature of either sign. The
    sinusoid frequencies are a (non-persistent) buffer, computed once. :class:`KVSelfAttention` and
    :class:`~kvmonai.networks.blocks.cvt_attention.CvTAttention` share this module, so its parameter names
    (``pos_proj.weight``, ``pos_proj.bias``) are those of the ``Linear`` both used before.

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129.

    Args:
        pos_channels: number ``m`` of sinusoidal channels (Borji: 50).

    Raises:
        ValueError: if ``pos_channels < 1``.
    """

    __constants__ = ["pos_channels", "query_channels", "key_channels"]

    def __init__(self, pos_channels: int = 50) -> None:
        query_channels, key_channels = positional_split(pos_channels)
        super().__init__(pos_channels, 1)
        self.pos_channels = pos_channels
        self.query_channels = query_channels
        self.key_channels = key_channels
        with torch.no_grad():  # start as plain KV: temperature sum(w) = 1, key bias g(j) = 0
            self.weight.zero_()
            self.weight[0, :query_channels] = 1.0 / query_channels
            self.bias.zero_()
        self.register_buffer("inv_freq", positional_frequencies(pos_channels).float(), persistent=False)

    def temperature(self) -> torch.Tensor:
        """The factor ``sum_c w_c`` on the logits (a 0-d tensor)."""
        return self.weight.sum()

    def key_bias(self, num_keys: int) -> torch.Tensor:
        """The per-key logit bias ``g(j) + b`` for ``num_keys`` keys, shape ``(num_keys,)``."""
        return key_position_bias(self.weight, self.bias, num_keys, self.pos_channels, self.inv_freq, check=False)

    def elementwise_ops(self, num_heads: int, dim_head: int, num_queries: int, num_keys: int) -> int:
        """Element-wise operations of one application, which MAC counts leave out.

        ``h n_q d_h`` multiplications (temperature), ``n_k (m - m_q)`` MACs (per-key bias) and ``h n_q n_k``
        additions (bias on the logits).
        """
        return num_heads * num_queries * dim_head + num_keys * self.key_channels + num_heads * num_queries * num_keys


def split_fused(t: torch.Tensor, parts: int, num_heads: int, dim_head: int) -> torch.Tensor:
    """Split a fused projection ``(B, n, parts * heads * d)`` laid out as ``(parts, heads, d)`` (MONAI's ``qkv``,
    Swin's ``qkv``, kvmonai's ``kv``) into ``(parts, B, heads, n, d)``."""
    b, n = t.shape[0], t.shape[1]
    return t.reshape(b, n, parts, num_heads, dim_head).permute(2, 0, 3, 1, 4)


def routed_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    mask: Optional[torch.Tensor] = None,  # noqa: UP045
    key_bias: Optional[torch.Tensor] = None,  # noqa: UP045
    training: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask + key_bias) v`` through ``scaled_dot_product_attention``, on its fused path.

    The one place where kvmonai's attention layers (:class:`KVSelfAttention`, CvT's attention and
    :class:`~kvmonai.networks.blocks.KVWindowAttention`) call SDPA. A per-key bias (KV+Pos) that needs a gradient
    goes in as extra head channels (:func:`append_key_bias`) when there is no other mask, because an additive mask
    that needs a gradient sends SDPA to its O(n^2)-memory math path; otherwise (eval, or with another mask) it is
    added to the mask, which the fused kernels take at no extra cost when no gradient flows to it.

    Args:
        q: queries ``(B, heads, n_q, d)``.
        k: keys ``(B, heads, n_k, d)``.
        v: values ``(B, heads, n_k, d_v)``.
        scale: logit scale.
        dropout_p: attention dropout (pass 0 in eval).
        mask: additive float mask broadcastable to ``(B, heads, n_q, n_k)``, or ``None``.
        key_bias: additive per-key bias ``(n_k,)`` (not divided by ``scale``), or ``None``.
        training: whether gradients may flow to ``key_bias`` (the module's ``training`` flag).

    Returns:
        ``(B, heads, n_q, d_v)``.
    """
    head = v.shape[-1]
    if key_bias is not None:
        if training and mask is None:
            q, k, v = append_key_bias(q, k, v, key_bias / scale)
        else:
            row = key_bias.to(q.dtype).view(1, 1, 1, -1)
            mask = row if mask is None else mask + row
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out[..., :head]


class KVSelfAttention(nn.Module):
    """Multi-head self-attention with a selectable variant; a drop-in replacement for MONAI's ``SABlock``.

    Variants (``attention``):

    * ``"qkv"``: standard attention ``softmax(Q K^T / sqrt(d_h)) V``, with ``SABlock``'s parameter layout (state
      dicts load both ways).
    * ``"kv"``: Borji's key-value attention. There is no query projection; one fused linear layer gives K and V and
      the logits of head ``h`` are ``K_h K_h^T / sqrt(d_h)`` (symmetric before the softmax). With ``qkv_bias=True``
      it has ``hidden^2 + hidden`` fewer parameters than ``"qkv"`` and ``n * hidden^2`` fewer MACs for ``n`` tokens.
    * ``"kvpos"``: ``"kv"`` plus Borji's 2D positional correction: logits ``S`` are broadcast over ``m`` fixed
      sinusoidal channels ``P[i, j, :]`` of the (query index, key index) grid and collapsed by one learned
      ``Linear(m, 1)``. Because the first channels of ``P`` depend only on ``i`` and the rest only on ``j``, the
      row-wise softmax of ``w . (S + P) + b`` equals that of ``(sum_c w_c) S + g(j)`` with
      ``g(j) = sum_{c in key half} w_c P_c(j)``: a learned temperature plus a per-key bias. That exact form is what
      is computed, in O(n) extra memory, never the ``n x n x m`` tensor. Exactly ``m + 1`` more parameters than
      ``"kv"`` (the ``Linear(m, 1)``, kept as ``pos_proj``); its bias and query-half weights only act through the
      temperature, as in the literal form. It is initialised so that the layer starts as plain ``"kv"``
      (temperature 1, zero key bias); Borji's default ``nn.Linear`` initialisation would start with a random
      temperature of either sign.

    All variants compute attention with :func:`torch.nn.functional.scaled_dot_product_attention`, so fused kernels
    serve them; KV+Pos passes its per-key bias as an additive mask in eval mode and, in training, as extra head
    channels (:func:`append_key_bias`), because a mask that needs a gradient sends SDPA to its slow math path.
    ``save_attn=True`` additionally stores the attention map in ``att_mat`` (computed separately, without gradient,
    for visualisation).

    Args:
        hidden_size: dimension of the hidden layer.
        num_heads: number of attention heads.
        dropout_rate: dropout on the attention weights and on the output, in ``[0, 1]``.
        qkv_bias: whether the input projections have a bias.
        save_attn: keep the last attention map in ``self.att_mat`` (B, heads, n, n).
        dim_head: dimension of each head; defaults to ``hidden_size // num_heads``.
        hidden_input_size: dimension of the input tokens; defaults to ``hidden_size``.
        causal: mask attention to earlier tokens only.
        sequence_length: maximum sequence length, required when ``causal``.
        rel_pos_embedding: ``"decomposed"`` to add MONAI's decomposed relative position embedding (2D/3D token
            grids of size ``input_size``) to the logits.
        input_size: token grid size, required with ``rel_pos_embedding``.
        attention_dtype: cast the attention computation to this dtype.
        include_fc: whether to include the output projection.
        use_combined_linear: one fused input projection (``qkv`` or ``kv``) instead of separate ``to_q``/``to_k``/
            ``to_v`` layers.
        use_flash_attention: accepted for ``SABlock`` compatibility; attention always goes through
            ``scaled_dot_product_attention``, which picks the fused kernel itself.
        attention: ``"qkv"`` (default, like ``kvmonai.networks.create``: the drop-in behaves as ``SABlock`` until a
            variant is named), ``"kv"`` or ``"kvpos"``.
        pos_channels: number ``m`` of sinusoidal channels of the KV+Pos correction (Borji: 50).

    Raises:
        ValueError: if ``attention`` is not one of :data:`ATTENTION_VARIANTS`.
        ValueError: if ``hidden_size`` or ``num_heads`` is not positive, or ``hidden_size`` is not divisible by
            ``num_heads`` (without ``dim_head``).
        ValueError: if ``dropout_rate`` is not in ``[0, 1]``.
        ValueError: if ``causal`` is set without ``sequence_length``.
        ValueError: if ``rel_pos_embedding`` is set without ``input_size``.
        ValueError: if ``pos_channels < 1`` for ``"kvpos"``.
    """

    __constants__ = ["attention", "num_heads", "dim_head", "inner_dim", "causal", "save_attn", "use_combined_linear"]

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        save_attn: bool = False,
        dim_head: int | None = None,
        hidden_input_size: int | None = None,
        causal: bool = False,
        sequence_length: int | None = None,
        rel_pos_embedding: str | None = None,
        input_size: tuple | None = None,
        attention_dtype: torch.dtype | None = None,
        include_fc: bool = True,
        use_combined_linear: bool = True,
        use_flash_attention: bool = False,
        attention: str = "qkv",
        pos_channels: int = 50,
    ) -> None:
        """Checks every argument before anything is built (early ``ValueError``s that name the argument, as MONAI's
        blocks do), then builds the projections the variant needs. Long on purpose: the checks and the projections
        they guard read top to bottom, and split helpers would each need most of the arguments."""
        super().__init__()
        check_option("attention", attention, ATTENTION_VARIANTS)
        if hidden_size < 1 or num_heads < 1:
            raise ValueError(f"hidden_size and num_heads must be positive, got {hidden_size} and {num_heads}.")
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        if dim_head is None and hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}); "
                "choose another num_heads or pass dim_head."
            )
        if dim_head is not None and dim_head < 1:
            raise ValueError(f"dim_head must be positive, got {dim_head}.")
        if causal and sequence_length is None:
            raise ValueError("causal=True needs sequence_length (the maximum number of tokens).")
        if rel_pos_embedding is not None and input_size is None:
            raise ValueError("rel_pos_embedding needs input_size (the token grid, e.g. (14, 14)).")

        self.attention = attention
        self.num_heads = num_heads
        self.dim_head = dim_head if dim_head is not None else hidden_size // num_heads
        self.inner_dim = self.num_heads * self.dim_head
        self.hidden_input_size = hidden_input_size if hidden_input_size else hidden_size
        self.scale = self.dim_head**-0.5
        self.dropout_rate = dropout_rate
        self.save_attn = save_attn
        self.causal = causal
        self.sequence_length = sequence_length
        self.attention_dtype = attention_dtype
        self.include_fc = include_fc
        self.use_combined_linear = use_combined_linear
        self.use_flash_attention = use_flash_attention
        self.input_size = input_size
        self.pos_channels = pos_channels if attention == "kvpos" else 0

        # Projections. Unused slots hold nn.Identity so that TorchScript sees every attribute.
        n_proj = 3 if attention == "qkv" else 2
        self.qkv = nn.Identity()
        self.kv = nn.Identity()
        self.to_q = nn.Identity()
        self.to_k = nn.Identity()
        self.to_v = nn.Identity()
        if use_combined_linear:
            fused = nn.Linear(self.hidden_input_size, n_proj * self.inner_dim, bias=qkv_bias)
            if attention == "qkv":
                self.qkv = fused
            else:
                self.kv = fused
        else:
            if attention == "qkv":
                self.to_q = nn.Linear(self.hidden_input_size, self.inner_dim, bias=qkv_bias)
            self.to_k = nn.Linear(self.hidden_input_size, self.inner_dim, bias=qkv_bias)
            self.to_v = nn.Linear(self.hidden_input_size, self.inner_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(self.inner_dim, self.hidden_input_size) if include_fc else nn.Identity()
        self.drop_output = nn.Dropout(dropout_rate)

        self.pos_proj = KVPositionCorrection(pos_channels) if attention == "kvpos" else None

        # same buffer as SABlock's (so state dicts load both ways); an empty, unsaved one without causal
        if causal and sequence_length is not None:
            mask = torch.tril(torch.ones(sequence_length, sequence_length)).view(1, 1, sequence_length, sequence_length)
            self.register_buffer("causal_mask", mask)
        else:
            self.register_buffer("causal_mask", torch.zeros(1, 1, 0, 0), persistent=False)

        self.rel_positional_embedding = (
            get_rel_pos_embedding_layer(rel_pos_embedding, input_size, self.dim_head, self.num_heads)
            if rel_pos_embedding is not None
            else None
        )
        self.att_mat = torch.Tensor()

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, heads * d) -> (B, heads, n, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.dim_head).transpose(1, 2)

    def key_position_bias(self, num_tokens: int) -> torch.Tensor:
        """The per-key bias ``g(j) + b`` of KV+Pos for a sequence of ``num_tokens`` tokens, shape ``(num_tokens,)``."""
        if self.pos_proj is None:
            return torch.zeros(num_tokens, device=self.causal_mask.device)
        return self.pos_proj.key_bias(num_tokens)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        """
        Args:
            x: tokens, ``B x n x C`` (``n`` = product of the token grid's sizes).
            attn_mask: optional key mask ``B x n``; keys where it is 0/False are ignored (as in ``SABlock``).

        Returns:
            ``B x n x C``.
        """
        b, n = x.shape[0], x.shape[1]
        if self.use_combined_linear:
            if self.attention == "qkv":
                q, k, v = split_fused(self.qkv(x), 3, self.num_heads, self.dim_head).unbind(0)
            else:
                k, v = split_fused(self.kv(x), 2, self.num_heads, self.dim_head).unbind(0)
                q = k
        else:
            k = self._split_heads(self.to_k(x))
            v = self._split_heads(self.to_v(x))
            q = self._split_heads(self.to_q(x)) if self.attention == "qkv" else k

        out_dtype = v.dtype
        if self.attention_dtype is not None:
            q, k, v = q.to(self.attention_dtype), k.to(self.attention_dtype), v.to(self.attention_dtype)

        # additive float mask, broadcast to (B, heads, n, n); None when nothing is added
        bias: Optional[torch.Tensor] = None  # noqa: UP045
        if self.rel_positional_embedding is not None:
            zeros = torch.zeros(b, self.num_heads, n, n, dtype=q.dtype, device=q.device)
            bias = self.rel_positional_embedding(x, zeros, q)
        q_logits = q
        key_bias: Optional[torch.Tensor] = None  # noqa: UP045
        if self.pos_proj is not None:
            q_logits = q * self.pos_proj.temperature().to(q.dtype)
            key_bias = self.pos_proj.key_bias(n).to(q.dtype)
        if self.causal:
            allowed = self.causal_mask[0, 0, :n, :n] != 0
            causal_bias = torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
            bias = causal_bias if bias is None else bias + causal_bias
        if attn_mask is not None:
            keys = attn_mask.reshape(b, 1, 1, n) != 0
            mask_bias = torch.zeros(b, 1, 1, n, dtype=q.dtype, device=q.device).masked_fill(~keys, float("-inf"))
            bias = mask_bias if bias is None else bias + mask_bias

        if self.save_attn:
            with torch.no_grad():
                logits = torch.matmul(q_logits, k.transpose(-1, -2)) * self.scale
                if bias is not None:
                    logits = logits + bias
                if key_bias is not None:
                    logits = logits + key_bias.view(1, 1, 1, n)
                self.att_mat = logits.softmax(dim=-1).detach()
        out = routed_sdpa(
            q_logits,
            k,
            v,
            self.scale,
            dropout_p=self.dropout_rate if self.training else 0.0,
            mask=bias,
            key_bias=key_bias,
            training=self.training and not self.save_attn,
        )
        out = out.to(out_dtype).transpose(1, 2).reshape(b, n, self.inner_dim)
        return self.drop_output(self.out_proj(out))
