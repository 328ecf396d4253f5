"""Pretrained encoder weights from local files, mapped onto kvmonai's networks (nothing is downloaded).

Readers (:func:`read_state`): torch files (``.pth``, ``.pt``, ``.bin``, also wrapped as ``{"state_dict": ...}`` or
``{"model": ...}``, ``module.`` prefixes removed), ``.safetensors`` and numpy ``.npz`` in Google's ViT layout
(``Transformer/encoderblock_N/MultiHeadDotProductAttention_1/query/kernel``..., with the R50 part
``conv_root/kernel``, ``block1/unit1/conv1/kernel``... of R50+ViT-B/16, the checkpoints TransUNet's reference code
loads). Formats (:func:`detect_format`):

* ``"google_npz"``: Google's ViT / R50+ViT ``.npz`` (google-research/vision_transformer);
* ``"timm_vit"``: a timm ``VisionTransformer`` state dict (``pos_embed``, ``blocks.N.attn.qkv.weight``...), hybrid
  ones (``patch_embed.backbone.stem.conv.weight``...) included;
* ``"monai_vit"``: MONAI ``ViT`` / ``UNETR`` weights (``vit.blocks.N.attn.qkv.weight``,
  ``vit.patch_embedding.position_embeddings``...), 2D or 3D;
* ``"monai_swin"``: MONAI ``SwinUNETR`` weights (``swinViT.*``, or the ``module.*`` keys of its self-supervised
  weights, or the ``encoder.*`` keys MONAI's ``filter_swinunetr`` reads), 2D or 3D;
* ``"timm"``: any timm model's state dict, for the timm backbones (``create("timm:<name>")``);
* ``"kvmonai"``: a kvmonai network's own state dict (``models/model.pt``), e.g. a trained QKV model for its KV twin.

Every source is first rewritten into one canonical layout per family (timm's ViT names for ViTs, MONAI's
``swinViT`` names for Swin), then one table per target family maps it on: SETR, TransUNet, UNETR, SwinUNETR and the
timm backbones (their own ``checkpoint_filter_fn``). On the way:

* position embeddings are resampled to the target's token grid with timm's ``resample_abs_pos_embed`` (bicubic,
  antialiased), a class token's position goes to SETR's ``cls_position`` and is dropped for targets without one;
* an input convolution with another channel count (1-channel or 2.5D 5-channel inputs vs RGB) is adapted with
  timm's ``adapt_input_conv`` (summed for 1 channel, else RGB repeated and scaled by 3 / C), and a patch embedding
  of another patch size with timm's ``resample_patch_embed`` (FlexiViT's pseudo-inverse resize);
* 3D MONAI weights go into 2D networks as the network would see a volume that is constant along the third axis:
  patch kernels are summed over that axis (exact), a ViT's position grid keeps its middle slice, a Swin window's
  relative position bias keeps the rows of relative offset 0 along that axis (exact), and a Swin patch merging keeps,
  for each 2D neighbour, the sum of its two 3D neighbours' reduction columns with the mean of their LayerNorm
  parameters (exact where those two LayerNorm parameter sets are equal);
* a KV or KV+Pos target is loaded through its QKV twin (a copy swapped to ``"qkv"`` with
  :func:`~kvmonai.networks.blocks.swap_attention`), then swapped back: the checkpoint's K, V and output weights are
  kept and its Q is dropped (reported as ``dropped``). This is the only place where that happens.

Every load returns a :class:`LoadReport` (loaded, missing, unexpected, ignored, dropped queries, resized). With
``strict=True`` (the default) nothing of the target's encoder may stay missing and nothing of the source may stay
unused; ``strict=False`` loads what fits but still refuses a file that fills less than ``min_fraction`` of the
encoder (a wrong file, not a partial one). An unreadable file or an unknown layout is a :class:`PretrainedError`
naming the file and keys; nothing is written into the network before every check has passed.

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (the ViT and its ``.npz`` checkpoints);
    Chen et al., "TransUNet", arXiv:2102.04306 (R50+ViT-B/16 loading, position grid resizing);
    Beyer et al., "FlexiViT", CVPR 2023 (patch embedding resizing);
    Borji, "Key-Value Transformer", arXiv:2305.19129 (dropping Q for KV attention).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kvmonai.utils import KVMonaiError, short_list

__all__ = [
    "FORMATS",
    "LoadReport",
    "PretrainedError",
    "detect_format",
    "load_pretrained",
    "read_state",
    "target_family",
]

#: the layouts :func:`detect_format` recognises
FORMATS: tuple[str, ...] = ("google_npz", "timm_vit", "monai_vit", "monai_swin", "timm", "kvmonai")


class PretrainedError(KVMonaiError, ValueError):
    """A pretrained-weights file cannot be read, is of an unknown layout, or does not fit the target network."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Args:
        path: the weights file.
        source_format: one of :data:`FORMATS`.
        target: class name of the network (and its attention).
        loaded: target parameter names filled from the file.
        missing: target encoder parameters the file did not fill (left as initialised).
        unexpected: source tensors that have no place in the target (or the wrong shape, with the shapes).
        ignored: source tensors outside an encoder (classifier heads, decoders, recomputed buffers).
        dropped: the source's query projections, left out for a KV target.
        resized: target name -> how its tensor was changed to fit (position grid, channels, patch size, 3D -> 2D).
        encoder_fraction: share of the target encoder's parameter elements that were loaded.
    """

    path: str
    source_format: str
    target: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)
    encoder_fraction: float = 0.0

    def summary(self) -> str:
        """A short table: one row per category with its count and first names."""
        rows = [
            ("loaded", self.loaded),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("ignored", self.ignored),
            ("dropped (Q)", self.dropped),
            ("resized", [f"{k} ({v})" for k, v in self.resized.items()]),
        ]
        lines = [
            f"pretrained weights {self.path} ({self.source_format}) -> {self.target}: "
            f"{self.encoder_fraction:.1%} of the encoder's parameters loaded",
            f"{'':12s} {'count':>5s}  tensors",
        ]
        lines += [f"{name:12s} {len(keys):5d}  {short_list(sorted(keys), 3)}" for name, keys in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------------------------- reading


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.npz``, ``.safetensors`` or a torch file, unwrapped, on the CPU.

    A torch file is loaded with ``weights_only=True``; a ``"state_dict"`` or ``"model"`` entry that is a mapping is
    taken as the state dict, and a ``module.`` prefix shared by all keys (``DataParallel``) is removed.

    Args:
        path: the file.

    Raises:
        PretrainedError: if the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights {path} do not exist (nothing is downloaded: bring the file).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as data:
                state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            from kvmonai.networks.checkpoint import CheckpointError, load_checkpoint

            try:
                obj = load_checkpoint(path)
            except CheckpointError as e:
                raise PretrainedError(str(e)) from None
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), Mapping):
                    obj = dict(obj[key])
                    break
            state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    except PretrainedError:
        raise
    except Exception as e:  # numpy, zipfile and safetensors raise many types for damaged files
        raise PretrainedError(f"pretrained weights {path} cannot be read as {suffix or 'a torch file'}: {e}") from None
    if not state:
        raise PretrainedError(f"pretrained weights {path} hold no tensors.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def detect_format(state: Mapping[str, torch.Tensor], network: nn.Module | None = None) -> str:
    """The layout of ``state``, one of :data:`FORMATS`.

    Args:
        state: tensors from :func:`read_state`.
        network: the target; a state dict with exactly its keys (or its QKV twin's) is ``"kvmonai"``, and any other
            layout is ``"timm"`` for a timm-backbone segmenter.

    Raises:
        PretrainedError: if the layout is none of them (the message shows the first keys).
    """
    if network is None:
        return _detect(state, [], False)
    twin = _qkv_twin(network)
    own = [_shapes(network.state_dict())] + ([_shapes(twin.state_dict())] if twin is not None else [])
    return _detect(state, own, _timm_backbone(network) is not None)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _detect(state: Mapping[str, torch.Tensor], own: list[dict[str, tuple[int, ...]]], timm_target: bool) -> str:
    keys = set(state)
    if any(_shapes(state) == shapes for shapes in own):
        return "kvmonai"
    if "Transformer/posembed_input/pos_embedding" in keys:
        return "google_npz"
    if "pos_embed" in keys and "blocks.0.attn.qkv.weight" in keys and not timm_target:
        return "timm_vit"
    if any(k.endswith("patch_embedding.position_embeddings") for k in keys):
        return "monai_vit"
    if any(re.search(r"(^|\.)layers1\.0\.blocks\.0\.attn\.qkv\.weight$", k) for k in keys):
        return "monai_swin"
    if timm_target:
        return "timm"
    raise PretrainedError(
        f"unknown weights layout (first keys: {short_list(sorted(keys))}); readable are Google ViT .npz, timm ViT, "
        "MONAI ViT/UNETR and SwinUNETR state dicts, timm state dicts for timm backbones, and kvmonai models."
    )


# ------------------------------------------------------------------------------- source -> canonical layouts


@dataclass
class _Canonical:
    """A source rewritten into its family's canonical names, with where each tensor came from."""

    family: str  # "vit" or "swin" (or "timm"/"kvmonai": passed through)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # canonical key -> source key(s)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # canonical key -> conversion note (3D -> 2D)
    num_prefix: int = 0  # class-token rows in front of pos_embed

    def put(self, key: str, value: torch.Tensor, origin: str, note: str | None = None) -> None:
        self.tensors[key] = value
        self.origin[key] = origin
        if note:
            self.notes[key] = note


_NPZ_BLOCK = "Transformer/encoderblock_{}/"
_NPZ_PARTS = {  # Google's names inside an encoder block -> timm's (weights transposed where they are kernels)
    "LayerNorm_0/scale": "norm1.weight",
    "LayerNorm_0/bias": "norm1.bias",
    "LayerNorm_2/scale": "norm2.weight",
    "LayerNorm_2/bias": "norm2.bias",
    "MlpBlock_3/Dense_0/kernel": "mlp.fc1.weight",
    "MlpBlock_3/Dense_0/bias": "mlp.fc1.bias",
    "MlpBlock_3/Dense_1/kernel": "mlp.fc2.weight",
    "MlpBlock_3/Dense_1/bias": "mlp.fc2.bias",
}
_NPZ_ATTN = "MultiHeadDotProductAttention_1/"
_NPZ_HEADS = ("head/", "pre_logits/")


def _hwio(kernel: torch.Tensor) -> torch.Tensor:
    """Flax convolution kernel (H, W, in, out) -> torch (out, in, H, W)."""
    return kernel.permute(3, 2, 0, 1).contiguous()


def _from_npz(state: Mapping[str, torch.Tensor]) -> _Canonical:
    """Google's ViT / R50+ViT ``.npz`` -> timm ViT names (kernels transposed, attention heads merged)."""
    out = _Canonical("vit")
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key].float()

    out.put("patch_embed.proj.weight", _hwio(take("embedding/kernel")), "embedding/kernel")
    if "embedding/bias" in state:
        out.put("patch_embed.proj.bias", take("embedding/bias"), "embedding/bias")
    if "cls" in state:
        out.put("cls_token", take("cls").reshape(1, 1, -1), "cls")
        out.num_prefix = 1
    out.put("pos_embed", take("Transformer/posembed_input/pos_embedding"), "Transformer/posembed_input/pos_embedding")
    for part, name in (("scale", "weight"), ("bias", "bias")):
        key = f"Transformer/encoder_norm/{part}"
        if key in state:
            out.put(f"norm.{name}", take(key), key)
    i = 0
    while f"{_NPZ_BLOCK.format(i)}{_NPZ_ATTN}query/kernel" in state:
        src = _NPZ_BLOCK.format(i)
        for part, name in _NPZ_PARTS.items():
            if src + part in state:
                t = take(src + part)
                out.put(f"blocks.{i}.{name}", t.t().contiguous() if part.endswith("kernel") else t, src + part)
        # query/key/value kernels are (D, heads, head_dim), biases (heads, head_dim); out/kernel (heads, head_dim, D)
        qkv = [take(f"{src}{_NPZ_ATTN}{n}/kernel") for n in ("query", "key", "value")]
        dim = qkv[0].shape[0]
        out.put(
            f"blocks.{i}.attn.qkv.weight",
            torch.cat([k.reshape(dim, -1).t() for k in qkv]),
            f"{src}{_NPZ_ATTN}{{query,key,value}}/kernel",
        )
        if f"{src}{_NPZ_ATTN}query/bias" in state:
            biases = [take(f"{src}{_NPZ_ATTN}{n}/bias").reshape(-1) for n in ("query", "key", "value")]
            out.put(f"blocks.{i}.attn.qkv.bias", torch.cat(biases), f"{src}{_NPZ_ATTN}{{query,key,value}}/bias")
        kernel = take(f"{src}{_NPZ_ATTN}out/kernel")
        out.put(f"blocks.{i}.attn.proj.weight", kernel.reshape(-1, kernel.shape[-1]).t(), f"{src}{_NPZ_ATTN}out/kernel")
        if f"{src}{_NPZ_ATTN}out/bias" in state:
            out.put(f"blocks.{i}.attn.proj.bias", take(f"{src}{_NPZ_ATTN}out/bias"), f"{src}{_NPZ_ATTN}out/bias")
        i += 1
    # the R50 of R50+ViT-B/16 (BiT ResNetV2 without pre-activation), in timm's hybrid names
    root = "patch_embed.backbone."
    if "conv_root/kernel" in state:
        out.put(root + "stem.conv.weight", _hwio(take("conv_root/kernel")), "conv_root/kernel")
        for part, name in (("scale", "weight"), ("bias", "bias")):
            out.put(root + f"stem.norm.{name}", take(f"gn_root/{part}").reshape(-1), f"gn_root/{part}")
    unit = re.compile(r"^block(\d+)/unit(\d+)/(conv|gn)(1|2|3|_proj)/(kernel|scale|bias)$")
    for key in state:
        m = unit.match(key)
        if not m:
            continue
        b, u, kind, idx, part = m.groups()
        base = f"{root}stages.{int(b) - 1}.blocks.{int(u) - 1}."
        layer = ("downsample." + ("conv" if kind == "conv" else "norm")) if idx == "_proj" else f"{kind}{idx}"
        layer = layer.replace("gn", "norm")
        name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[part]
        t = take(key)
        out.put(base + f"{layer}.{name}", _hwio(t) if part == "kernel" else t.reshape(-1), key)
    for key in state:
        if key not in used:
            (out.ignored if key.startswith(_NPZ_HEADS) else out.unexpected).append(key)
    return out


#: timm ViT keys that belong to the canonical layout (the rest of a timm ViT is a head or an unsupported extra)
_TIMM_VIT_KEYS = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|patch_embed\.backbone\..+"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$"
)
_TIMM_HEADS = re.compile(r"^(head|fc_norm|head_drop|pre_logits)\.")


def _from_timm_vit(state: Mapping[str, torch.Tensor]) -> _Canonical:
    out = _Canonical("vit")
    for key, value in state.items():
        if _TIMM_VIT_KEYS.match(key):
            out.put(key, value.float(), key)
        else:
            (out.ignored if _TIMM_HEADS.match(key) else out.unexpected).append(key)
    out.num_prefix = 1 if "cls_token" in state else 0
    return out


def _cube_side(n: int, key: str) -> int:
    side = round(n ** (1 / 3))
    if side**3 != n:
        raise PretrainedError(f"{key} has {n} positions: a 3D grid must be a cube to be sliced for a 2D network.")
    return side


def _from_monai_vit(state: Mapping[str, torch.Tensor]) -> _Canonical:
    """MONAI ``ViT`` (``UNETR.vit``) -> timm ViT names; a 3D ViT is reduced to 2D (see the module docstring)."""
    out = _Canonical("vit")
    pos_key = next(k for k in state if k.endswith("patch_embedding.position_embeddings"))
    prefix = pos_key[: -len("patch_embedding.position_embeddings")]
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key].float()

    conv = prefix + "patch_embedding.patch_embeddings.weight"
    if conv not in state:
        raise PretrainedError(
            f"MONAI ViT weights without {conv} (a 'perceptron' patch embedding?): only the 'conv' one is mapped."
        )
    weight = take(conv)
    pos = take(pos_key)
    if weight.ndim == 5:  # 3D: the response to a volume constant along the third axis
        weight = weight.sum(dim=-1)
        side = _cube_side(pos.shape[1], pos_key)
        pos = pos.reshape(1, side, side, side, -1)[:, :, :, side // 2].reshape(1, side * side, -1)
        out.notes["patch_embed.proj.weight"] = "3D kernel summed over the third axis"
        out.notes["pos_embed"] = "middle slice of the 3D grid"
    out.put("patch_embed.proj.weight", weight, conv, out.notes.get("patch_embed.proj.weight"))
    if prefix + "patch_embedding.patch_embeddings.bias" in state:
        bias = prefix + "patch_embedding.patch_embeddings.bias"
        out.put("patch_embed.proj.bias", take(bias), bias)
    out.put("pos_embed", pos, pos_key, out.notes.get("pos_embed"))
    if prefix + "cls_token" in state:  # MONAI adds its class token after the position embedding: no position row
        out.put("cls_token", take(prefix + "cls_token"), prefix + "cls_token")
    names = {"norm1": "norm1", "norm2": "norm2", "mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2"}
    names.update({"attn.out_proj": "attn.proj"})
    block = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
    separate: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in state:
        m = block.match(key)
        if not m:
            continue
        i, layer, part = m.groups()
        if layer == "norm_cross_attn":
            used.add(key)
            out.ignored.append(key)  # MONAI's unused cross-attention LayerNorm
        elif layer in names:
            out.put(f"blocks.{i}.{names[layer]}.{part}", take(key), key)
        elif layer == "attn.qkv":
            out.put(f"blocks.{i}.attn.qkv.{part}", take(key), key)
        elif layer in ("attn.to_q", "attn.to_k", "attn.to_v"):
            separate.setdefault((i, part), {})[layer[-1]] = take(key)
    for (i, part), qkv in separate.items():
        if set(qkv) == {"q", "k", "v"}:
            out.put(f"blocks.{i}.attn.qkv.{part}", torch.cat([qkv[n] for n in "qkv"]), f"{prefix}blocks.{i}.attn.to_*")
    for part in ("weight", "bias"):
        if f"{prefix}norm.{part}" in state:
            out.put(f"norm.{part}", take(f"{prefix}norm.{part}"), f"{prefix}norm.{part}")
    for key in state:
        if key not in used:
            inside = key.startswith(prefix) and not key.startswith(prefix + "classification_head")
            (out.unexpected if inside and prefix else out.ignored).append(key)
    return out


def _swin_merge_2d(weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A 3D Swin patch merging (8 neighbours) as the 2D one (4) for inputs constant along the third axis.

    MONAI concatenates the 3D neighbours in the order of ``itertools.product`` over the (x, y, z) offsets and the 2D
    ones over (y, x) offsets (``x[:, j::2, i::2]``), i.e. 2D part ``a + 2 b`` for x offset ``a`` and y offset ``b``,
    3D parts ``4 a + 2 b + c``.
    """
    c = weight.shape[1] // 8
    w3 = weight.reshape(weight.shape[0], 8, c)
    g3, b3 = gamma.reshape(8, c), beta.reshape(8, c)
    w2, g2, b2 = [], [], []
    for b in range(2):
        for a in range(2):
            pair = [4 * a + 2 * b, 4 * a + 2 * b + 1]
            w2.append(w3[:, pair].sum(1))
            g2.append(g3[pair].mean(0))
            b2.append(b3[pair].mean(0))
    return torch.cat(w2, 1), torch.cat(g2), torch.cat(b2)  # 2D parts in the order a + 2 b


def _from_monai_swin(state: Mapping[str, torch.Tensor]) -> _Canonical:
    """MONAI ``SwinUNETR`` / its self-supervised weights -> ``swinViT`` names without the prefix (2D)."""
    out = _Canonical("swin")
    if any(k.startswith("encoder.") for k in state):  # the layout MONAI's own filter reads
        from monai.networks.nets.swin_unetr import filter_swinunetr

        renamed = {}
        for key, value in state.items():
            hit = filter_swinunetr(key, value)
            if hit is None:
                out.ignored.append(key)
            else:
                renamed[hit[0]] = hit[1]
        state = renamed
    src = {}
    for key, value in state.items():
        name = key[len("swinViT.") :] if key.startswith("swinViT.") else key
        src[name] = (key, value.float())
    is_3d = any(v.ndim == 5 for k, (_, v) in src.items() if k == "patch_embed.proj.weight")
    for name, (key, value) in src.items():
        name2 = name.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
        if name.endswith(("relative_position_index", "attn_mask")):
            out.ignored.append(key)  # recomputed buffers
        elif name.startswith("patch_embed.proj."):
            if value.ndim == 5:
                out.put(name2, value.sum(-1), key, "3D kernel summed over the third axis")
            else:
                out.put(name2, value, key)
        elif re.match(r"^layers[1-4]\.0\.blocks\.\d+\.", name):
            if name.endswith("relative_position_bias_table") and is_3d:
                side = round(value.shape[0] ** (1 / 3))  # 2 w - 1
                table = value.reshape(side, side, side, -1)[:, :, side // 2]
                out.put(name2, table.reshape(side * side, -1), key, "3D table at relative offset 0 on the third axis")
            else:
                out.put(name2, value, key)
        elif re.match(r"^layers[1-4]\.0\.downsample\.(reduction|norm)\.", name):
            out.put(name2, value, key)
        elif key.startswith(("swinViT.", "layers", "patch_embed")):
            out.unexpected.append(key)
        else:
            out.ignored.append(key)  # the decoder of a full SwinUNETR, the self-supervised heads
    if is_3d:
        for stage in range(1, 5):
            base = f"layers{stage}.0.downsample."
            if base + "reduction.weight" in out.tensors and base + "norm.weight" in out.tensors:
                w, g, b = _swin_merge_2d(
                    out.tensors[base + "reduction.weight"],
                    out.tensors[base + "norm.weight"],
                    out.tensors[base + "norm.bias"],
                )
                note = "3D merging: the two neighbours along the third axis combined"
                out.put(base + "reduction.weight", w, out.origin[base + "reduction.weight"], note)
                out.put(base + "norm.weight", g, out.origin[base + "norm.weight"], note)
                out.put(base + "norm.bias", b, out.origin[base + "norm.bias"], note)
    return out


# ------------------------------------------------------------------------------------ canonical -> target tables


@dataclass(frozen=True)
class _Family:
    """How a canonical layout lands in one target family."""

    name: str
    source: str  # canonical family it takes: "vit", "swin" or "timm"
    encoder: tuple[str, ...]  # prefixes of the target's encoder parameters
    rules: tuple[tuple[str, str], ...]  # (regex on canonical keys, replacement)
    input_convs: tuple[str, ...] = ()  # target keys of convolutions on the input image
    pos_embed: str = ""  # target key of the patch-grid position embedding
    cls_position: str = ""  # target key of the class token's position ("" if it has none)
    grid: Callable[[nn.Module], tuple[int, int]] | None = None


_VIT_BLOCKS = (
    (r"^blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$", r"blocks.\1.\2.\3"),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"blocks.\1.attn.out_proj.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"blocks.\1.mlp.linear1.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"blocks.\1.mlp.linear2.\2"),
)
_PATCH = ((r"^patch_embed\.proj\.(weight|bias)$", r"patch_embedding.patch_embeddings.\1"),)
_RESNET = (  # timm's hybrid ResNetV2 -> TransUNet's ResNetV2Encoder
    (r"^patch_embed\.backbone\.stem\.conv\.weight$", "resnet.root.0.weight"),
    (r"^patch_embed\.backbone\.stem\.norm\.(weight|bias)$", r"resnet.root.1.\1"),
    (r"^patch_embed\.backbone\.stages\.0\.blocks\.(\d+)\.", r"resnet.stage1.\1."),
    (r"^patch_embed\.backbone\.stages\.1\.blocks\.(\d+)\.", r"resnet.stage2.\1."),
    (r"^patch_embed\.backbone\.stages\.2\.blocks\.(\d+)\.", r"resnet.stage3.\1."),
)
_RESNET_UNIT = (
    (r"\.downsample\.conv\.weight$", ".shortcut.0.weight"),
    (r"\.downsample\.norm\.(weight|bias)$", r".shortcut.1.\1"),
    (r"\.norm([123])\.(weight|bias)$", r".gn\1.\2"),
)


def _vit_grid(attr: str) -> Callable[[nn.Module], tuple[int, int]]:
    return lambda net: tuple(int(s) for s in getattr(net, attr))


_FAMILIES: dict[str, _Family] = {
    "setr": _Family(
        "setr",
        "vit",
        ("patch_embedding.", "cls_token", "cls_position", "blocks.", "norm."),
        (*_PATCH, (r"^cls_token$", "cls_token"), *_VIT_BLOCKS, (r"^norm\.(weight|bias)$", r"norm.\1")),
        input_convs=("patch_embedding.patch_embeddings.weight",),
        pos_embed="patch_embedding.position_embeddings",
        cls_position="cls_position",
        grid=_vit_grid("grid"),
    ),
    "unetr": _Family(
        "unetr",
        "vit",
        ("vit.",),
        tuple((p, "vit." + r) for p, r in (*_PATCH, *_VIT_BLOCKS, (r"^norm\.(weight|bias)$", r"norm.\1"))),
        input_convs=("vit.patch_embedding.patch_embeddings.weight",),
        pos_embed="vit.patch_embedding.position_embeddings",
        grid=_vit_grid("feat_size"),
    ),
    "transunet": _Family(
        "transunet",
        "vit",
        ("resnet.", "patch_embedding.", "blocks.", "encoder_norm."),
        (*_PATCH, *_VIT_BLOCKS, (r"^norm\.(weight|bias)$", r"encoder_norm.\1"), *_RESNET),
        input_convs=("resnet.root.0.weight",),
        pos_embed="patch_embedding.position_embeddings",
        grid=_vit_grid("grid"),
    ),
    "swin_unetr": _Family(
        "swin_unetr",
        "swin",
        ("swinViT.",),
        ((r"^(.+)$", r"swinViT.\1"),),
        input_convs=("swinViT.patch_embed.proj.weight",),
    ),
    "timm": _Family("timm", "timm", ("backbone.",), ((r"^(.+)$", r"backbone.\1"),)),
}


#: parameters that never take part in a forward pass (MONAI's TransformerBlock keeps a cross-attention LayerNorm)
_UNUSED = re.compile(r"\.norm_cross_attn\.")


def _timm_backbone(network: nn.Module) -> nn.Module | None:
    backbone = getattr(network, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) and type(backbone).__module__.startswith("timm.") else None


def target_family(network: nn.Module) -> str:
    """The mapping table that serves ``network``: ``"setr"``, ``"transunet"``, ``"unetr"``, ``"swin_unetr"`` or
    ``"timm"`` (a segmenter with a timm model at ``.backbone``).

    Raises:
        PretrainedError: for a network without a table (CvT, the CNN reference).
    """
    from monai.networks.nets import UNETR, SwinUNETR

    from kvmonai.networks.nets.setr import SETR
    from kvmonai.networks.nets.transunet import TransUNet

    for cls, name in ((SETR, "setr"), (TransUNet, "transunet"), (UNETR, "unetr"), (SwinUNETR, "swin_unetr")):
        if isinstance(network, cls):
            return name
    if _timm_backbone(network) is not None:
        return "timm"
    raise PretrainedError(
        f"no pretrained-weights mapping for {type(network).__name__}; mapped are SETR, TransUNet, UNETR, SwinUNETR "
        "and the timm backbones."
    )


def _map_key(family: _Family, key: str) -> str | None:
    for pattern, repl in family.rules:
        if re.match(pattern, key):
            out = re.sub(pattern, repl, key)
            if family.name == "transunet" and out.startswith("resnet.stage"):
                for p, r in _RESNET_UNIT:
                    out = re.sub(p, r, out)
            return out
    return None


# --------------------------------------------------------------------------------------------------- loading


def _attention_variant(network: nn.Module) -> str:
    """The attention variant of ``network``'s attention layers (``"qkv"`` when it has none of kvmonai's)."""
    for module in network.modules():
        variant = getattr(module, "attention", None)
        if isinstance(variant, str) and variant in ("kv", "kvpos") and module is not network:
            return variant
    variant = getattr(network, "attention", "qkv")
    return variant if variant in ("kv", "kvpos") else "qkv"


def _qkv_twin(network: nn.Module) -> nn.Module | None:
    """A copy of ``network`` with QKV attention, or ``None`` when ``network`` already has QKV attention."""
    if _attention_variant(network) == "qkv":
        return None
    from kvmonai.networks.blocks import swap_attention

    args = getattr(network, "init_args", None)
    if _timm_backbone(network) is not None and isinstance(args, Mapping):
        # timm's attention conversion does not go back from KV: the twin is built again, with QKV attention
        return type(network)(**{**args, "attention": "qkv"})
    twin = copy.deepcopy(network)
    swap_attention(twin, "qkv")
    return twin


def _swap_back(twin: nn.Module, network: nn.Module, variant: str) -> None:
    """Convert the loaded QKV twin to ``variant`` (K, V and output kept, Q dropped) and copy it into ``network``."""
    from kvmonai.networks.blocks import swap_attention

    args = getattr(network, "init_args", None)
    if _timm_backbone(network) is not None and isinstance(args, Mapping):
        skip = args.get("skip_unsupported", True)
        swap_attention(twin.backbone, variant, pos_channels=args.get("pos_channels", 50), skip_unsupported=skip)
    else:
        swap_attention(twin, variant)
    network.load_state_dict(twin.state_dict())


def _resample_pos(grid_tokens: torch.Tensor, new: tuple[int, int], key: str) -> torch.Tensor:
    from kvmonai.networks.timm_import import import_timm

    import_timm()
    from timm.layers import resample_abs_pos_embed

    n = grid_tokens.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise PretrainedError(f"{key}: {n} positions are not a square grid, so the grid cannot be resized.")
    return resample_abs_pos_embed(grid_tokens, list(new), [side, side], num_prefix_tokens=0)


def _fit(
    family: _Family, target: str, value: torch.Tensor, own: torch.Tensor, resized: dict[str, str]
) -> torch.Tensor | None:
    """``value`` made to fit ``own`` where a documented rule allows (input channels, patch size); else ``None``."""
    if value.shape == own.shape:
        return value
    if target not in family.input_convs or value.ndim != 4 or own.ndim != 4 or value.shape[0] != own.shape[0]:
        return None
    from kvmonai.networks.timm_import import import_timm

    import_timm()
    from timm.layers import resample_patch_embed
    from timm.models import adapt_input_conv

    notes = []
    if value.shape[1] != own.shape[1]:
        notes.append(f"input channels {value.shape[1]} -> {own.shape[1]}")
        value = adapt_input_conv(own.shape[1], value, base_chans=value.shape[1])
    if value.shape[2:] != own.shape[2:] and family.pos_embed:  # a ViT's patch embedding: FlexiViT resize
        notes.append(f"patch {tuple(value.shape[2:])} -> {tuple(own.shape[2:])}")
        value = resample_patch_embed(value, list(own.shape[2:]))
    if value.shape != own.shape:
        return None
    resized[target] = ", ".join(notes)
    return value


def _assemble(
    network: nn.Module, canon: _Canonical, family: _Family, report: LoadReport, twin_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The target tensors (in the QKV twin's names) from a canonical layout, filling ``report``."""
    mapped: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for key, value in canon.tensors.items():
        if family.source == "vit" and key == "pos_embed":
            if not family.pos_embed:
                report.unexpected.append(canon.origin[key])
                continue
            prefix, grid = value[:, : canon.num_prefix], value[:, canon.num_prefix :]
            own = twin_state[family.pos_embed]
            new_grid = family.grid(network)
            if grid.shape[1] != own.shape[1]:
                old = math.isqrt(grid.shape[1])
                grid = _resample_pos(grid, new_grid, canon.origin[key])
                report.resized[family.pos_embed] = f"grid {old}x{old} -> {new_grid[0]}x{new_grid[1]}"
            if key in canon.notes:
                report.resized[family.pos_embed] = "; ".join(
                    x for x in (canon.notes[key], report.resized.get(family.pos_embed)) if x
                )
            mapped[family.pos_embed] = grid
            if canon.num_prefix and family.cls_position:
                mapped[family.cls_position] = prefix
            elif canon.num_prefix:
                report.ignored.append(f"{canon.origin[key]}[:, :{canon.num_prefix}] (class-token position)")
            continue
        if family.source == "vit" and key == "cls_token" and not family.cls_position:
            report.ignored.append(f"{canon.origin[key]} (the target has no class token)")
            continue
        target = _map_key(family, key)
        if target is None or target not in twin_state:
            report.unexpected.append(canon.origin[key])
            continue
        fitted = _fit(family, target, value, twin_state[target], report.resized)
        if fitted is None:
            wrong.append(f"{canon.origin[key]} {tuple(value.shape)} -> {target} {tuple(twin_state[target].shape)}")
            continue
        if key in canon.notes:
            report.resized[target] = "; ".join(x for x in (canon.notes[key], report.resized.get(target)) if x)
        mapped[target] = fitted
    report.unexpected += wrong
    return mapped


def _timm_mapped(
    network: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport, twin_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A timm state dict for a timm backbone, through the backbone module's own ``checkpoint_filter_fn``."""
    import importlib

    backbone = _timm_backbone(network)
    module = importlib.import_module(type(backbone).__module__)
    state = dict(state)
    filt = getattr(module, "checkpoint_filter_fn", None)
    if filt is not None:
        state = filt(state, backbone)
    mapped = {}
    for key, value in state.items():
        target = "backbone." + key
        if target not in twin_state:
            (report.ignored if _TIMM_HEADS.match(key) else report.unexpected).append(key)
        elif twin_state[target].shape != value.shape:
            report.unexpected.append(f"{key} {tuple(value.shape)} -> {target} {tuple(twin_state[target].shape)}")
        else:
            mapped[target] = value.float()
    return mapped


def _map_family(
    network: nn.Module,
    state: Mapping[str, torch.Tensor],
    fmt: str,
    family: _Family,
    report: LoadReport,
    twin_state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map a foreign file (timm, Google ``.npz``, MONAI ViT or Swin) onto ``network``'s family: the tensors by the
    network's keys, and the file's key each came from.

    Raises:
        PretrainedError: when the format does not map onto the family (ViT weights for a Swin network...).
    """
    if family.source == "timm":
        mapped = _timm_mapped(network, state, report, twin_state)
        return mapped, {k: k[len("backbone.") :] for k in mapped}
    canon = {"google_npz": _from_npz, "timm_vit": _from_timm_vit, "monai_vit": _from_monai_vit}.get(fmt)
    if fmt == "monai_swin":
        canon = _from_monai_swin
    if canon is None or (family.source == "swin") != (fmt == "monai_swin"):
        raise PretrainedError(
            f"pretrained weights {report.path} are {fmt} weights, which do not map onto {type(network).__name__} "
            f"(it takes {'Swin' if family.source == 'swin' else 'ViT'} weights)."
        )
    canonical = canon(state)
    report.unexpected += canonical.unexpected
    report.ignored += canonical.ignored
    mapped = _assemble(network, canonical, family, report, twin_state)
    origin = {}
    for src_key, target in ((k, _map_key(family, k)) for k in canonical.tensors):
        if target is not None:
            origin[target] = canonical.origin[src_key]
    return mapped, origin


def _report_query_dropped(
    report: LoadReport, network: nn.Module, mapped: Mapping[str, torch.Tensor], origin: Mapping[str, str]
) -> None:
    """Loaded through the QKV twin of a KV network: record the query weights dropped, name the loaded keys as KV."""
    kept = set(network.state_dict())
    fused = [k for k in mapped if re.search(r"\.qkv\.(weight|bias)$", k)]
    report.dropped = sorted(
        [f"{origin.get(k, k)} (query rows 0:{mapped[k].shape[0] // 3})" for k in fused]
        + [f"{origin.get(k, k)} (query)" for k in mapped if k not in kept and k not in fused]
    )
    report.loaded = [re.sub(r"\.qkv\.(weight|bias)$", r".kv.\1", k) for k in report.loaded]


def load_pretrained(
    network: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    min_fraction: float = 0.5,
    source_format: str | None = None,
) -> LoadReport:
    """Load the pretrained weights in ``path`` into ``network``'s encoder (in place) and report what was done.

    Args:
        network: a kvmonai SETR, TransUNet, UNETR or SwinUNETR (any attention), or a timm-backbone segmenter.
        path: the weights file (see the module docstring for the formats).
        strict: refuse the file unless every encoder parameter of ``network`` is filled and every tensor of the
            file is used (classifier heads, decoders and recomputed buffers do not count as unused).
        min_fraction: with ``strict=False``, the least share of the encoder's parameter elements to load.
        source_format: one of :data:`FORMATS`; detected when ``None``.

    Returns:
        the :class:`LoadReport`.

    Raises:
        PretrainedError: when the file is unreadable, of an unknown layout, has no table for ``network``, or
            (``strict``) leaves encoder parameters missing or tensors unused, or fills less than ``min_fraction`` of
            the encoder; ``network`` is unchanged then.
        ValueError: if ``min_fraction`` is not in ``[0, 1]`` or ``source_format`` is unknown.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
    if source_format is not None and source_format not in FORMATS:
        raise ValueError(f"source_format must be one of {FORMATS}, got {source_format!r}.")
    state = read_state(path)
    variant, twin = _attention_variant(network), _qkv_twin(network)
    own = [_shapes(network.state_dict())] + ([_shapes(twin.state_dict())] if twin is not None else [])
    fmt = source_format or _detect(state, own, _timm_backbone(network) is not None)
    if fmt == "kvmonai" and _shapes(state) == own[0]:
        twin = None  # the network's own layout (a KV model for a KV network): no conversion
    into = twin if twin is not None else network
    twin_state = into.state_dict()
    report = LoadReport(str(path), fmt, f"{type(network).__name__} ({variant})")

    if fmt == "kvmonai":
        family = None
        mismatch = [k for k in state if k in twin_state and state[k].shape != twin_state[k].shape]
        report.unexpected = [f"{k} {tuple(state[k].shape)}" for k in mismatch]
        mapped = {k: v for k, v in state.items() if k in twin_state and k not in mismatch}
        encoder = [k for k, _ in into.named_parameters()]
        origin = {k: k for k in mapped}
    else:
        family = _FAMILIES[target_family(network)]
        mapped, origin = _map_family(network, state, fmt, family, report, twin_state)
        encoder = [k for k, _ in into.named_parameters() if k.startswith(family.encoder)]
    encoder = [k for k in encoder if not _UNUSED.search(k)]

    params = dict(into.named_parameters())
    total = sum(params[k].numel() for k in encoder) or 1
    report.loaded = sorted(k for k in mapped if k in params)
    report.missing = sorted(k for k in encoder if k not in mapped)
    report.encoder_fraction = sum(params[k].numel() for k in report.loaded if k in encoder) / total
    if twin is not None:
        _report_query_dropped(report, network, mapped, origin)
    if strict and (report.missing or report.unexpected):
        raise PretrainedError(
            f"pretrained weights {path} ({fmt}) do not fill {type(network).__name__} exactly: "
            f"missing {short_list(sorted(report.missing))}; unexpected {short_list(sorted(report.unexpected))}. "
            "Pass strict=False (bundles: pretrained_strict false) to load what fits."
        )
    if report.encoder_fraction < min_fraction:
        raise PretrainedError(
            f"pretrained weights {path} ({fmt}) fill only {report.encoder_fraction:.1%} of "
            f"{type(network).__name__}'s encoder (less than {min_fraction:.0%}): "
            f"missing {short_list(sorted(report.missing))}; unexpected {short_list(sorted(report.unexpected))}. "
            "Is it the right file for this architecture?"
        )
    with torch.no_grad():
        own = into.state_dict()
        for key, value in mapped.items():
            own[key].copy_(value.to(own[key].dtype))
    if twin is not None:
        _swap_back(twin, network, variant)
    return report
