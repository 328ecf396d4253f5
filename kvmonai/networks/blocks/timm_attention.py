"""Borji's key-value (KV) attention for the attention modules of timm (``pytorch-image-models``).

Each converter keeps a timm module's key and value projections, its output projection and everything else it
holds (normalisations, relative position biases, rotary embeddings, gates) and drops the query projection: the
query of every token is its key, ``q_i := k_i`` (after any ``k_norm`` and rotary embedding), as in Borji's KV
attention. Two mechanisms serve the timm classes:

* **timm's forward kept** (:class:`KeyAsQuery`): where a module's forward only calls ``self.qkv(x)`` and splits its
  output, the fused ``qkv`` projection is replaced by a :class:`KeyAsQuery` holding the K and V rows only (one
  matrix product of ``2/3`` the size) that hands timm's forward the keys in the query slots. timm's own forward then
  computes exactly KV, with its masks, position biases, window handling and ``set_window_size``. This covers Swin v1
  and v2 window attention, CaiT's talking-heads attention, MaxViT's ``Attention2d``/``AttentionCl`` (per-head
  interleaved layout), FastViT, EfficientFormer, LeViT and Hiera.
* **a kvmonai module** where timm's forward cannot compute KV from the kept weights or where KV+Pos changes the
  logits: :class:`TimmKVAttention` (``timm.layers.Attention``: ViT, DeiT, PiT, CrossViT's self-attention...),
  :class:`TimmKVAttentionRope` (``timm.layers.AttentionRope`` and EVA's ``EvaAttention``) and
  :class:`TimmKVEfficientAttention` (Next-ViT's ``EfficientAttention``, the paper's E-MHSA).

KV+Pos (Borji's positional correction, :class:`~kvmonai.networks.blocks.KVPositionCorrection`) is offered where the
tokens form one global 1D sequence: the three kvmonai modules. Windowed, partitioned or head-mixing attention
refuses it, as kvmonai's Swin window attention does.

Converting keeps every K, V and output weight unchanged (K/V rows are taken from the fused projection, in timm's
order), so loading a QKV checkpoint into a QKV timm model and converting it gives the same weights as converting
first and loading the K/V/output part. Modules whose query does not come from the same tokens (CrossViT's
``CrossAttention``, CaiT's ``ClassAttn``, LeViT's ``AttentionDownsample``) or which are not softmax attention over
``Q K^T`` (CoaT's factorised attention) cannot be converted: :data:`TIMM_UNSUPPORTED` names them and why.

References:
    A. Borji, "Key-Value Transformer", arXiv:2305.19129, 2023.
    R. Wightman, "PyTorch Image Models" (timm), https://github.com/huggingface/pytorch-image-models, 2019.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kvmonai.networks.blocks.kv_attention import ATTENTION_VARIANTS, KVPositionCorrection, routed_sdpa
from kvmonai.utils import check_option

__all__ = [
    "TIMM_ATTENTION_CLASSES",
    "TIMM_KVPOS_CLASSES",
    "TIMM_UNSUPPORTED",
    "KeyAsQuery",
    "KeyValueLinear",
    "TimmKVAttention",
    "TimmKVAttentionRope",
    "TimmKVEfficientAttention",
    "check_timm_attention",
    "convert_timm_attention",
    "is_converted_timm_attention",
    "timm_class_name",
]


def timm_class_name(module: nn.Module) -> str:
    """``"<module>.<qualname>"`` of ``module``'s class, e.g. ``"timm.layers.attention.Attention"``."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


#: timm attention classes that cannot be converted, with the reason
TIMM_UNSUPPORTED: dict[str, str] = {
    "timm.models.crossvit.CrossAttention": "its query is the class token of the other branch (cross-attention)",
    "timm.models.cait.ClassAttn": "its query is the class token only (class attention)",
    "timm.models.levit.AttentionDownsample": "its queries come from subsampled tokens through their own projection",
    "timm.models.coat.FactorAttnConvRelPosEnc": "it is factorised attention (softmax over the keys), not Q K^T",
}


# ----------------------------------------------------------------------------------------------------------------
# timm's forward kept: the fused qkv projection replaced by the K and V rows, keys handed out as queries
# ----------------------------------------------------------------------------------------------------------------


class KeyValueLinear(nn.Module):
    """``Linear(in_features, 2 * features)`` giving ``[keys | values]`` with a bias on the values only.

    The kept part of Swin v2's ``qkv`` projection: Swin v2 (like EVA) has a learned query and value bias but a
    fixed zero key bias, which a plain ``nn.Linear`` bias would turn into ``features`` trainable parameters.

    Args:
        in_features: input channels.
        features: channels of the keys and of the values.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(self, in_features: int, features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = in_features
        self.features = features
        self.weight = nn.Parameter(torch.empty(2 * features, in_features, device=device, dtype=dtype))
        self.v_bias = nn.Parameter(torch.zeros(features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        return F.linear(x, self.weight, bias)


def _select_rows(proj: nn.Module, rows: torch.Tensor) -> nn.Module:
    """A copy of projection ``proj`` computing only its output channels ``rows`` (in that order).

    Handles ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``), batch norms, and timm's projection-plus-norm
    pairs (modules with ``linear`` and ``bn`` children, LeViT's ``LinearNorm``/``ConvNorm``). The copy keeps the
    class, the dtype, the device and ``requires_grad`` of every parameter.

    Raises:
        TypeError: for any other module, naming its class.
    """
    rows = rows.to(device="cpu", dtype=torch.long)
    new = copy.deepcopy(proj)
    if isinstance(proj, (nn.Linear, nn.Conv1d, nn.Conv2d, _BatchNorm)):
        if isinstance(proj, (nn.Conv1d, nn.Conv2d)) and proj.groups != 1:
            raise TypeError(f"cannot split the output channels of a grouped {type(proj).__name__}.")
        for name, tensor in list(proj.named_parameters(recurse=False)) + list(proj.named_buffers(recurse=False)):
            if tensor.dim() == 0:  # num_batches_tracked
                continue
            picked = tensor.detach()[rows.to(tensor.device)].clone()
            if isinstance(tensor, nn.Parameter):
                setattr(new, name, nn.Parameter(picked, requires_grad=tensor.requires_grad))
            else:
                setattr(new, name, picked)
        for attr in ("out_features", "out_channels", "num_features"):
            if hasattr(new, attr):
                setattr(new, attr, len(rows))
        return new
    if isinstance(getattr(proj, "linear", None), nn.Module) and isinstance(getattr(proj, "bn", None), _BatchNorm):
        new.linear = _select_rows(proj.linear, rows)
        new.bn = _select_rows(proj.bn, rows)
        return new
    raise TypeError(f"cannot split the output channels of a {type(proj).__name__} projection.")


class KeyAsQuery(nn.Module):
    """A fused ``qkv`` projection with its query rows removed; its output holds the keys in the query slots.

    ``kv`` computes the key and value channels of the original fused projection (in their original order), and the
    output is ``kv(x).index_select(dim, index)``: the channel layout of the original ``qkv`` output, each query
    channel being a copy of the key channel of the same head and position. The module that called ``qkv`` (timm's
    forward, unchanged) therefore computes attention with ``Q = K``, Borji's KV attention, while holding and
    multiplying by only the K and V weights: the parameters and MACs of the query projection are gone, the copy
    costs memory traffic only. Gradients of the query slots flow to the key weights.

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129.

    Args:
        kv: the projection computing the kept (key and value) channels.
        index: for every output channel of the original projection, the ``kv`` channel it takes (``LongTensor``).
        dim: the channel dimension of ``kv``'s output (-1 for linear layers on tokens, 1 for convolutions).

    Raises:
        ValueError: if ``index`` is not a 1D integer tensor.
    """

    __constants__ = ["dim"]

    def __init__(self, kv: nn.Module, index: torch.Tensor, dim: int = -1) -> None:
        super().__init__()
        if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index must be a 1D integer tensor, got shape {tuple(index.shape)} of {index.dtype}.")
        self.kv = kv
        self.dim = dim
        self.register_buffer("index", index.long(), persistent=False)

    @classmethod
    def from_fused(
        cls, qkv: nn.Module, q_rows: torch.Tensor, k_rows: torch.Tensor, dim: int = -1, kv: nn.Module | None = None
    ) -> KeyAsQuery:
        """The :class:`KeyAsQuery` of fused projection ``qkv`` whose query channels ``q_rows`` pair with ``k_rows``.

        Args:
            qkv: the fused projection (its weights are copied, not shared).
            q_rows: output channels of ``qkv`` that are queries.
            k_rows: the key channel of the same head and position, one per entry of ``q_rows``.
            dim: channel dimension of the output.
            kv: the kept projection, when the caller builds it (e.g. a :class:`KeyValueLinear`); by default the rows
                of ``qkv`` that are not queries.
        """
        total = int(_out_channels(qkv))
        keep = torch.ones(total, dtype=torch.bool)
        keep[q_rows] = False
        kept_rows = keep.nonzero().flatten()
        position = torch.full((total,), -1, dtype=torch.long)
        position[kept_rows] = torch.arange(len(kept_rows))
        index = position.clone()
        index[q_rows] = position[k_rows]
        return cls(_select_rows(qkv, kept_rows) if kv is None else kv, index, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kv(x).index_select(self.dim, self.index)


def _out_channels(proj: nn.Module) -> int:
    for attr in ("out_features", "out_channels"):
        if hasattr(proj, attr):
            return int(getattr(proj, attr))
    inner = getattr(proj, "linear", None)
    if inner is not None:
        return _out_channels(inner)
    raise TypeError(f"cannot tell the output channels of a {type(proj).__name__} projection.")


def _stacked_rows(total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key channels of a fused projection laid out ``(3, heads, head_dim)``: ``[Q | K | V]``."""
    if total % 3:
        raise ValueError(f"a fused (3, heads, head_dim) projection needs a multiple of 3 channels, got {total}.")
    a = total // 3
    return torch.arange(a), torch.arange(a, 2 * a)


def _interleaved_rows(num_heads: int, key_dim: int, val_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key channels of a per-head interleaved projection ``(heads, [key_dim | key_dim | val_dim])``."""
    block = 2 * key_dim + val_dim
    start = torch.arange(num_heads)[:, None] * block
    offset = torch.arange(key_dim)[None, :]
    return (start + offset).flatten(), (start + key_dim + offset).flatten()


def _maxvit_rows(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if module.head_first:  # (heads, 3, dim_head)
        return _interleaved_rows(module.num_heads, module.dim_head, module.dim_head)
    return _stacked_rows(_out_channels(module.qkv))


def _levit_rows(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return _interleaved_rows(module.num_heads, module.key_dim, module.val_dim)


def _fused_stacked(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return _stacked_rows(_out_channels(module.qkv))


_WINDOWED = "it attends within (shifted) windows, which carry their own 2D relative position bias"

#: timm classes converted by keeping timm's forward (qkv slot -> KeyAsQuery): (rows of Q and K, channel dim, why no
#: KV+Pos)
_KEPT_FORWARD: dict[str, tuple[Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]], int, str]] = {
    "timm.models.swin_transformer.WindowAttention": (_fused_stacked, -1, _WINDOWED),
    "timm.models.swin_transformer_v2.WindowAttention": (_fused_stacked, -1, _WINDOWED),
    "timm.models.cait.TalkingHeadAttn": (_fused_stacked, -1, "talking heads mix the logits of the heads"),
    "timm.models.maxxvit.Attention2d": (_maxvit_rows, 1, "it attends within block or grid partitions"),
    "timm.models.maxxvit.AttentionCl": (_maxvit_rows, -1, "it attends within block or grid partitions"),
    "timm.models.fastvit.Attention": (_fused_stacked, -1, "kvmonai keeps timm's forward for it"),
    "timm.models.efficientformer.Attention": (_levit_rows, -1, "its logits carry a learned 2D position bias"),
    "timm.models.levit.Attention": (_levit_rows, -1, "its logits carry a learned 2D position bias"),
    "timm.models.hiera.MaskUnitAttention": (_fused_stacked, -1, "it attends within mask units, with pooled queries"),
}


def _convert_kept_forward(block: nn.Module) -> nn.Module:
    """A copy of ``block`` (a class of :data:`_KEPT_FORWARD`) whose ``qkv`` is a :class:`KeyAsQuery`."""
    rows_of, dim, _ = _KEPT_FORWARD[timm_class_name(block)]
    if timm_class_name(block) == "timm.models.levit.Attention" and block.use_conv:
        dim = 1
    q_rows, k_rows = rows_of(block)
    kv: nn.Module | None = None
    q_bias = getattr(block, "q_bias", None)
    if q_bias is not None:  # Swin v2: qkv has no bias; learned q and v biases, zero k bias
        weight = block.qkv.weight
        a = q_bias.numel()
        kv = KeyValueLinear(weight.shape[1], a, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            kv.weight.copy_(weight[a:])
            kv.v_bias.copy_(block.v_bias)
        kv.weight.requires_grad_(weight.requires_grad)
        kv.v_bias.requires_grad_(block.v_bias.requires_grad)
    slot = KeyAsQuery.from_fused(block.qkv, q_rows, k_rows, dim, kv=kv)
    slot.index = slot.index.to(_device_of(block))
    new = copy.deepcopy(block, memo={id(block.qkv): slot})
    if q_bias is not None:  # timm's forward then calls self.qkv(x), which adds the value bias itself
        new.q_bias = None
        new.k_bias = None
        new.v_bias = None
    return new


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------
# kvmonai modules for timm's global token attention
# ----------------------------------------------------------------------------------------------------------------


def _attn_bias(
    attn_mask: Optional[torch.Tensor],  # noqa: UP045
    is_causal: bool,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Optional[torch.Tensor]:  # noqa: UP045
    """The additive float mask of timm's ``attn_mask``/``is_causal`` arguments (SDPA's meaning; causal wins)."""
    if is_causal:
        return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(~attn_mask, float("-inf"))
    return attn_mask.to(dtype)


class TimmKVAttention(nn.Module):
    """KV / KV+Pos version of ``timm.layers.Attention`` (ViT, DeiT, PiT, CrossViT's self-attention, ...).

    timm's ``Attention`` projects ``qkv`` and splits it into three; it cannot run on the K and V weights alone, and
    KV+Pos changes its logits, so this module reimplements the forward. It keeps ``k_norm``, the output ``norm``,
    the optional ``gate``, ``proj`` and the dropouts of the source and has one fused ``kv = Linear(dim, 2 * kv_dim)``
    laid out ``(2, kv_heads, head_dim)``. The logits are ``K K^T * scale`` (``K`` after ``k_norm``); for
    ``"kvpos"`` they are scaled by the learned temperature of :class:`KVPositionCorrection` and shifted by its per-key
    bias over the 1D token sequence (class/prefix tokens included, as in Borji's ViT). With ``qkv_bias`` it has
    ``attn_dim * dim + attn_dim`` fewer parameters than timm's module (plus ``q_norm``'s) and ``n * dim * attn_dim``
    fewer MACs for ``n`` tokens. Attention runs through ``scaled_dot_product_attention`` (:func:`routed_sdpa`), like
    timm's ``fused_attn`` path. Grouped key/value heads (``num_kv_heads < num_heads``, from ``AttentionRope``) are
    repeated to ``num_heads`` after ``k_norm`` and rope, as timm does, so the query of head ``h`` is its key.

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129; timm's ``Attention`` (Wightman, timm).

    Args:
        dim: input channels.
        num_heads: attention heads.
        attn_head_dim: channels per head (default ``dim // num_heads``).
        dim_out: output channels (default ``dim``).
        qkv_bias: bias of the key and value projection.
        value_bias_only: no key bias, only a value bias (``v_bias``; EVA's layout); needs ``qkv_bias``.
        proj_bias: bias of the output projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        num_kv_heads: key/value heads (default ``num_heads``).
        attention: ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction.

    Raises:
        ValueError: if ``attention`` is not ``"kv"``/``"kvpos"``, if ``dim`` is not divisible by ``num_heads``
            without ``attn_head_dim``, if ``num_heads`` is not a multiple of ``num_kv_heads``, or if
            ``value_bias_only`` is set without ``qkv_bias``.
    """

    __constants__ = ["attention", "num_heads", "num_kv_heads", "head_dim", "attn_dim", "kv_dim"]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_head_dim: int | None = None,
        dim_out: int | None = None,
        qkv_bias: bool = False,
        value_bias_only: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_kv_heads: int | None = None,
        attention: str = "kv",
        pos_channels: int = 50,
    ) -> None:
        super().__init__()
        check_option("attention", attention, ("kv", "kvpos"))
        if attn_head_dim is None and dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}) without attn_head_dim.")
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads}).")
        if value_bias_only and not qkv_bias:
            raise ValueError("value_bias_only needs qkv_bias=True.")
        self.attention = attention
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.kv_dim = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.kv = nn.Linear(dim, 2 * self.kv_dim, bias=qkv_bias and not value_bias_only)
        self.v_bias = nn.Parameter(torch.zeros(self.kv_dim)) if value_bias_only else None
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.Identity()
        self.gate = None
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = KVPositionCorrection(pos_channels) if attention == "kvpos" else None

    def _keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (after ``k_norm``) and values ``(B, kv_heads, n, head_dim)``."""
        b, n = x.shape[0], x.shape[1]
        if self.v_bias is None:
            kv = self.kv(x)
        else:
            kv = F.linear(x, self.kv.weight, torch.cat((torch.zeros_like(self.v_bias), self.v_bias)))
        k, v = kv.reshape(b, n, 2, self.num_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.k_norm(k), v

    def _attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: Optional[torch.Tensor],  # noqa: UP045
        is_causal: bool,
    ) -> torch.Tensor:
        """Attention with ``Q = K`` (and the KV+Pos correction), then norm, gate and output projection."""
        b, n = x.shape[0], x.shape[1]
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        q = k
        key_bias: Optional[torch.Tensor] = None  # noqa: UP045
        if self.pos_proj is not None:
            q = k * self.pos_proj.temperature().to(k.dtype)
            key_bias = self.pos_proj.key_bias(n).to(k.dtype)
        mask = _attn_bias(attn_mask, is_causal, n, k.dtype, k.device)
        dropout = self.attn_drop.p if self.training else 0.0
        out = routed_sdpa(q, k, v, self.scale, dropout, mask, key_bias, self.training)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,  # noqa: UP045
        is_causal: bool = False,
    ) -> torch.Tensor:
        """
        Args:
            x: tokens ``(B, n, dim)``.
            attn_mask: boolean (True = attend) or additive mask broadcastable to ``(B, heads, n, n)``, or None.
            is_causal: causal attention (takes precedence over ``attn_mask``, as in timm).

        Returns:
            ``(B, n, dim_out)``.
        """
        k, v = self._keys_values(x)
        return self._attend(x, k, v, attn_mask, is_causal)


class TimmKVAttentionRope(TimmKVAttention):
    """KV / KV+Pos version of ``timm.layers.AttentionRope`` and of EVA's ``EvaAttention`` (rotary embeddings).

    As :class:`TimmKVAttention`, with timm's rotary position embedding applied to the keys (after ``k_norm``,
    skipping the first ``num_prefix_tokens`` tokens): the query of each token is its rotated key, exactly what timm
    would compute with its query weights replaced by its key weights. EVA's fixed zero key bias is kept as
    ``value_bias_only`` (only ``v_bias`` is learned).

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129; timm's ``AttentionRope`` and ``EvaAttention``.

    Args:
        num_prefix_tokens: leading (class/register) tokens without rotary embedding.
        rotate_half: timm's ``'half'`` rope layout instead of the interleaved one.
        **kwargs: the arguments of :class:`TimmKVAttention`.
    """

    __constants__ = TimmKVAttention.__constants__ + ["num_prefix_tokens", "rotate_half"]

    def __init__(self, *args, num_prefix_tokens: int = 1, rotate_half: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.rotate_half = rotate_half

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        rope: Optional[torch.Tensor] = None,  # noqa: UP045
        attn_mask: Optional[torch.Tensor] = None,  # noqa: UP045
        is_causal: bool = False,
    ) -> torch.Tensor:
        """
        Args:
            x: tokens ``(B, n, dim)``.
            rope: timm's concatenated sin/cos rotary embedding of the non-prefix tokens, or None.
            attn_mask: boolean (True = attend) or additive mask broadcastable to ``(B, heads, n, n)``, or None.
            is_causal: causal attention.

        Returns:
            ``(B, n, dim_out)``.
        """
        k, v = self._keys_values(x)
        if rope is not None:
            from timm.layers import apply_rot_embed_cat  # timm is there: rope comes from a timm model

            npt = self.num_prefix_tokens
            rotated = apply_rot_embed_cat(k[:, :, npt:, :], rope, half=self.rotate_half)
            k = torch.cat((k[:, :, :npt, :], rotated), dim=2).type_as(v)
        return self._attend(x, k, v, attn_mask, is_causal)


class TimmKVEfficientAttention(nn.Module):
    """KV / KV+Pos version of Next-ViT's ``EfficientAttention`` (E-MHSA, with spatial reduction of keys and values).

    timm's module has separate ``q``, ``k``, ``v`` projections and needs all three, so this module reimplements its
    forward without ``q``. The query of token ``i`` is ``W_k x_i`` on the full token sequence; keys and values come
    from the tokens reduced by ``sr`` (average pooling over ``sr_ratio ** 2`` consecutive tokens) and ``norm`` when
    ``sr_ratio > 1``, as in timm. With ``sr_ratio == 1`` the keys are computed once and serve as queries:
    ``dim^2 + dim`` fewer parameters and ``n * dim^2`` fewer MACs; with ``sr_ratio > 1`` the same parameters go, but
    ``W_k`` is applied to the full sequence (for the queries) as well as to the reduced one, so the MACs stay those
    of timm's module. KV+Pos's per-key bias indexes the (reduced) key sequence.

    Based on: Borji, "Key-Value Transformer", arXiv:2305.19129; Li et al., "Next-ViT", arXiv:2207.05501; timm's
    ``EfficientAttention``.

    Args:
        dim: input channels.
        out_dim: output channels (default ``dim``).
        head_dim: channels per head.
        qkv_bias: bias of the key and value projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        sr_ratio: spatial reduction ratio of the keys and values.
        norm_layer: norm after the reduction.
        attention: ``"kv"`` or ``"kvpos"``.
        pos_channels: channels ``m`` of the KV+Pos correction.

    Raises:
        ValueError: if ``attention`` is not ``"kv"``/``"kvpos"`` or ``dim`` is not divisible by ``head_dim``.
    """

    __constants__ = ["attention", "num_heads", "head_dim"]

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        head_dim: int = 32,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm1d,
        attention: str = "kv",
        pos_channels: int = 50,
    ) -> None:
        super().__init__()
        check_option("attention", attention, ("kv", "kvpos"))
        if dim % head_dim:
            raise ValueError(f"dim ({dim}) must be divisible by head_dim ({head_dim}).")
        self.attention = attention
        self.dim = dim
        self.out_dim = out_dim or dim
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, self.out_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        self.sr = None
        self.norm = None
        if sr_ratio > 1:
            self.sr = nn.AvgPool1d(kernel_size=sr_ratio**2, stride=sr_ratio**2)
            self.norm = norm_layer(dim)
        self.pos_proj = KVPositionCorrection(pos_channels) if attention == "kvpos" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tokens ``(B, n, dim)``.

        Returns:
            ``(B, n, out_dim)``.
        """
        b, n, c = x.shape
        q = self.k(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr is not None and self.norm is not None:
            reduced = self.norm(self.sr(x.transpose(1, 2))).transpose(1, 2)
            k = self.k(reduced).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v(reduced).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        else:
            k = q
            v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        key_bias: Optional[torch.Tensor] = None  # noqa: UP045
        if self.pos_proj is not None:
            q = q * self.pos_proj.temperature().to(q.dtype)
            key_bias = self.pos_proj.key_bias(k.shape[2]).to(k.dtype)
        dropout = self.attn_drop.p if self.training else 0.0
        out = routed_sdpa(q, k, v, self.scale, dropout, None, key_bias, self.training)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


def _with_pos(new: nn.Module, old: nn.Module) -> None:
    """Keep ``old``'s KV+Pos correction in ``new`` when both have one."""
    old_pos = getattr(old, "pos_proj", None)
    if new.pos_proj is not None and old_pos is not None:
        new.pos_proj.load_state_dict(old_pos.state_dict())


def _like(new: nn.Module, old: nn.Module) -> None:
    """Put ``new`` on ``old``'s device and dtype and in its train/eval mode (before weights are copied into it)."""
    ref = next(iter(old.parameters()))
    new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)


def _convert_global(block: nn.Module, attention: str, pos_channels: int) -> nn.Module:
    """``timm.layers.Attention``/``AttentionRope``, EVA's ``EvaAttention`` or a converted one -> the kvmonai module."""
    name = timm_class_name(block)
    converted = isinstance(block, TimmKVAttention)
    rope = isinstance(block, TimmKVAttentionRope) or name in (
        "timm.layers.attention.AttentionRope",
        "timm.models.eva.EvaAttention",
    )
    if converted:
        q_bias = block.kv.bias is not None or block.v_bias is not None
        value_only = block.v_bias is not None
        num_kv_heads = block.num_kv_heads
    elif getattr(block, "qkv", None) is not None:
        value_only = getattr(block, "q_bias", None) is not None  # EVA's fused layout: q/v biases, zero k bias
        q_bias = value_only or block.qkv.bias is not None
        num_kv_heads = block.num_heads
    else:  # separate q/k/v projections (AttentionRope/EVA with qkv_fused=False)
        q_bias = block.v_proj.bias is not None
        value_only = q_bias and block.k_proj.bias is None
        num_kv_heads = getattr(block, "num_kv_heads", block.num_heads)
    dim = block.kv.in_features if converted else _in_features(block)
    kwargs = dict(
        dim=dim,
        num_heads=block.num_heads,
        attn_head_dim=block.head_dim,
        dim_out=block.proj.out_features,
        qkv_bias=q_bias,
        value_bias_only=value_only,
        proj_bias=block.proj.bias is not None,
        attn_drop=block.attn_drop.p,
        proj_drop=block.proj_drop.p,
        num_kv_heads=num_kv_heads,
        attention=attention,
        pos_channels=block.pos_proj.pos_channels if getattr(block, "pos_proj", None) is not None else pos_channels,
    )
    if rope:
        new: TimmKVAttention = TimmKVAttentionRope(
            **kwargs, num_prefix_tokens=block.num_prefix_tokens, rotate_half=bool(getattr(block, "rotate_half", False))
        )
    else:
        new = TimmKVAttention(**kwargs)
    _like(new, block)
    new.scale = float(block.scale)
    with torch.no_grad():
        if converted:
            weight, bias, v_bias = block.kv.weight, block.kv.bias, block.v_bias
        elif getattr(block, "qkv", None) is not None:  # fused (3, heads, head_dim): drop the first attn_dim rows
            a = block.qkv.out_features // 3
            weight = block.qkv.weight[a:]
            bias = None if block.qkv.bias is None else block.qkv.bias[a:]
            v_bias = getattr(block, "v_bias", None)
        else:  # separate projections: fuse K and V
            weight = torch.cat((block.k_proj.weight, block.v_proj.weight))
            bias = None if block.k_proj.bias is None else torch.cat((block.k_proj.bias, block.v_proj.bias))
            v_bias = block.v_proj.bias if value_only else None
        new.kv.weight.copy_(weight)
        if new.kv.bias is not None and bias is not None:
            new.kv.bias.copy_(bias)
        if new.v_bias is not None and v_bias is not None:
            new.v_bias.copy_(v_bias)
    new.k_norm = copy.deepcopy(block.k_norm)
    new.norm = copy.deepcopy(block.norm)
    new.gate = copy.deepcopy(block.gate)
    new.proj = copy.deepcopy(block.proj)
    _with_pos(new, block)
    return new


def _in_features(block: nn.Module) -> int:
    fused = getattr(block, "qkv", None)
    return int(fused.in_features if fused is not None else block.k_proj.in_features)


def _convert_nextvit(block: nn.Module, attention: str, pos_channels: int) -> TimmKVEfficientAttention:
    """Next-ViT's ``EfficientAttention`` (or a converted one) -> :class:`TimmKVEfficientAttention`."""
    new = TimmKVEfficientAttention(
        block.dim,
        block.proj.out_features,
        block.head_dim,
        qkv_bias=block.k.bias is not None,
        attn_drop=block.attn_drop.p,
        proj_drop=block.proj_drop.p,
        sr_ratio=block.sr_ratio,
        attention=attention,
        pos_channels=block.pos_proj.pos_channels if getattr(block, "pos_proj", None) is not None else pos_channels,
    )
    _like(new, block)
    for name in ("k", "v", "proj", "sr", "norm"):
        setattr(new, name, copy.deepcopy(getattr(block, name)))
    _with_pos(new, block)
    return new


#: timm classes converted to a kvmonai module (KV and KV+Pos), and their converter
_OWN_MODULE: dict[str, Callable[[nn.Module, str, int], nn.Module]] = {
    "timm.layers.attention.Attention": _convert_global,
    "timm.layers.attention.AttentionRope": _convert_global,
    "timm.models.eva.EvaAttention": _convert_global,
    "timm.models.nextvit.EfficientAttention": _convert_nextvit,
}

#: the timm attention classes :func:`convert_timm_attention` converts
TIMM_ATTENTION_CLASSES: tuple[str, ...] = tuple(_OWN_MODULE) + tuple(_KEPT_FORWARD)
#: those of them that also take ``"kvpos"`` (their tokens form one global sequence)
TIMM_KVPOS_CLASSES: tuple[str, ...] = tuple(_OWN_MODULE)


def is_converted_timm_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a timm attention module already converted by :func:`convert_timm_attention`."""
    if isinstance(module, (TimmKVAttention, TimmKVEfficientAttention)):
        return True
    return timm_class_name(module) in _KEPT_FORWARD and isinstance(getattr(module, "qkv", None), KeyAsQuery)


def check_timm_attention(block: nn.Module, attention: str, path: str = "") -> None:
    """Raise if :func:`convert_timm_attention` cannot convert ``block`` to ``attention``.

    Args:
        block: a timm attention module (a class of :data:`TIMM_ATTENTION_CLASSES`) or a converted one.
        attention: target variant, one of ``ATTENTION_VARIANTS``.
        path: where ``block`` sits in its model (for the message).

    Raises:
        ValueError: if ``attention`` is unknown, or is ``"kvpos"`` for a class without one global token sequence, or
            is ``"qkv"`` for a module already converted to KV.
        TypeError: if ``block`` is not a timm attention class that can be converted.
    """
    check_option("attention", attention, ATTENTION_VARIANTS)
    name = timm_class_name(block)
    where = f" at '{path}'" if path else ""
    converted = is_converted_timm_attention(block)
    if not converted and name not in TIMM_ATTENTION_CLASSES:
        reason = TIMM_UNSUPPORTED.get(name, "it is not a timm attention class kvmonai knows")
        raise TypeError(f"cannot convert {name}{where} to KV attention: {reason}.")
    if attention == "qkv" and converted:
        raise ValueError(
            f"{name}{where} was converted to KV attention and is not converted back; build the QKV model again "
            "(a QKV target leaves timm's unconverted modules as they are)."
        )
    if attention == "kvpos" and name in _KEPT_FORWARD:
        raise ValueError(
            f"KV+Pos is not available for {name}{where}: {_KEPT_FORWARD[name][2]}. Borji's positional correction "
            "indexes one global 1D token sequence; use 'kv' (its position handling is kept)."
        )


def convert_timm_attention(block: nn.Module, attention: str, pos_channels: int = 50, path: str = "") -> nn.Module:
    """The KV (or KV+Pos) version of timm attention module ``block``, with its K, V, output and other weights.

    ``"qkv"`` returns ``block`` itself (timm's modules are QKV attention); ``"kv"`` on a converted module returns an
    equal copy, and switching a converted global-sequence module between ``"kv"`` and ``"kvpos"`` keeps its weights
    (and a KV+Pos correction it has). Weights are copied, not shared: K and V rows are taken from the fused
    projection unchanged, so converting a model after loading a QKV checkpoint gives exactly the K/V/output weights
    of that checkpoint. See the module docstring for which classes take which mechanism.

    Args:
        block: a timm attention module (:data:`TIMM_ATTENTION_CLASSES`) or one converted by this function.
        attention: ``"qkv"``, ``"kv"`` or ``"kvpos"`` (only for :data:`TIMM_KVPOS_CLASSES`).
        pos_channels: channels ``m`` of a new KV+Pos correction.
        path: where ``block`` sits in its model, for error messages.

    Returns:
        the converted module, on ``block``'s device and dtype and in its train/eval mode.

    Raises:
        TypeError: if ``block`` cannot be converted (see :data:`TIMM_UNSUPPORTED`).
        ValueError: if ``attention`` is unknown or not available for ``block`` (see :func:`check_timm_attention`).
    """
    check_timm_attention(block, attention, path)
    if attention == "qkv":
        return block
    name = timm_class_name(block)
    if isinstance(block, TimmKVEfficientAttention):
        return _convert_nextvit(block, attention, pos_channels)
    if isinstance(block, TimmKVAttention):
        return _convert_global(block, attention, pos_channels)
    if name in _OWN_MODULE:
        return _OWN_MODULE[name](block, attention, pos_channels)
    if isinstance(block.qkv, KeyAsQuery):  # converted already, kept forward
        return copy.deepcopy(block)
    return _convert_kept_forward(block)
