"""MONAI transforms for 2.5D slice training on prepared GI tract volumes, and gain-robust intensity scaling.

All transforms expect channel-first volumes ``(C, H, W, D)`` as produced by ``LoadImaged`` + ``EnsureChannelFirstd``
on the output of ``kvmonai prepare`` (image ``C = 1``, label ``C = 3``) and work on ``torch.Tensor`` /
``MetaTensor`` (numpy arrays are converted). They are plain MONAI transforms, so bundle configs can use them, e.g.::

    {"_target_": "kvmonai.data.RandSliceSamplerd", "keys": ["image", "label"], "num_samples": 4, "pos_fraction": 0.75},
    {"_target_": "kvmonai.data.ExtractSliced", "keys": "image", "offsets": [-2, 0, 2]},
    {"_target_": "kvmonai.data.ExtractSliced", "keys": "label"},
    {"_target_": "kvmonai.data.ScaleIntensityRobustd", "keys": "image"}

Neighbour offsets are clamped at the ends of the volume (slice 0 with offset -2 repeats slice 0).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, Randomizable, Transform
from monai.transforms.traits import MultiSampleTrait
from monai.utils import TransformBackends, convert_to_tensor

__all__ = [
    "DEFAULT_OFFSETS",
    "ExtractSlice",
    "ExtractSliced",
    "NeighbourChannels",
    "NeighbourChannelsd",
    "RandSliceSamplerd",
    "ScaleIntensityRobust",
    "ScaleIntensityRobustd",
    "neighbour_indices",
]

#: default 2.5D neighbours: two slices (6 mm) below and above the centre slice
DEFAULT_OFFSETS: tuple[int, ...] = (-2, 0, 2)


def _check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    offs = tuple(int(o) for o in offsets)
    if not offs:
        raise ValueError("offsets must hold at least one integer, e.g. (-2, 0, 2) or (0,).")
    return offs


def neighbour_indices(index: int, depth: int, offsets: Sequence[int] = DEFAULT_OFFSETS) -> list[int]:
    """Indices of the neighbours of slice ``index``, clamped to ``0 .. depth - 1``.

    Args:
        index: the centre slice (0-based).
        depth: number of slices of the volume.
        offsets: offsets from the centre slice.

    Returns:
        one index per offset.

    Raises:
        ValueError: when ``index`` is outside the volume or ``offsets`` is empty.
    """
    if not 0 <= index < depth:
        raise ValueError(f"slice index {index} is outside a volume of {depth} slices (0..{depth - 1}).")
    return [min(max(index + o, 0), depth - 1) for o in _check_offsets(offsets)]


def _as_tensor(img: Any) -> torch.Tensor:
    return convert_to_tensor(img, track_meta=get_track_meta())


def _slice_affine(affine: torch.Tensor, index: int, dim: int) -> torch.Tensor:
    """The (N-1)-D affine of slice ``index`` along spatial axis ``dim`` of an N-D affine."""
    a = affine.clone().to(torch.float64)
    n = a.shape[0] - 1
    a[:n, n] = a[:n, n] + a[:n, dim] * index  # origin moves to the slice
    keep = [i for i in range(n + 1) if i != dim]
    return a[keep][:, keep]


class _PerKeyd(MapTransform):
    """A dictionary transform that applies its array transform ``self.transform`` to every key (MONAI's pattern)."""

    transform: Any

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the transform to every key.

        Args:
            data: the sample.

        Returns:
            a copy of ``data`` with each key's value transformed.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class NeighbourChannels(Transform):
    """Stack neighbouring slices as channels for every slice of a volume.

    ``(C, H, W, D) -> (C * K, H, W, D)`` where ``K = len(offsets)``; output channel ``c * K + k`` at slice ``z`` is
    input channel ``c`` at slice ``clamp(z + offsets[k])``. Use it before a 2D ``SliceInferer`` so that every slice
    sees its neighbours.

    Args:
        offsets: slice offsets (default ``(-2, 0, 2)``).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, offsets: Sequence[int] = DEFAULT_OFFSETS) -> None:
        self.offsets = _check_offsets(offsets)

    def __call__(self, img: Any) -> torch.Tensor:
        """Apply the transform.

        Args:
            img: channel-first volume ``(C, H, W, D)``.

        Returns:
            ``(C * K, H, W, D)`` with the metadata of ``img``.

        Raises:
            ValueError: when ``img`` is not 4D.
        """
        t = _as_tensor(img)
        if t.ndim != 4:
            raise ValueError(f"expected a channel-first volume (C, H, W, D), got shape {tuple(t.shape)}.")
        raw = t.as_tensor() if isinstance(t, MetaTensor) else t
        depth = raw.shape[-1]
        idx = torch.arange(depth, device=raw.device)
        parts = [raw[..., (idx + o).clamp(0, depth - 1)] for o in self.offsets]  # each (C, H, W, D)
        out = torch.stack(parts, dim=1).reshape(raw.shape[0] * len(self.offsets), *raw.shape[1:])
        if isinstance(t, MetaTensor):
            return MetaTensor(out, meta=dict(t.meta), applied_operations=list(t.applied_operations))
        return out


class NeighbourChannelsd(_PerKeyd):
    """Dictionary version of :class:`NeighbourChannels`.

    Args:
        keys: keys of the volumes to expand (usually only the image).
        offsets: slice offsets (default ``(-2, 0, 2)``).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, offsets: Sequence[int] = DEFAULT_OFFSETS, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = NeighbourChannels(offsets)


class ExtractSlice(Transform):
    """Take slice ``index`` of a volume, with its neighbours as channels.

    ``(C, H, W, D) -> (C * K, H, W)``; channel ``c * K + k`` is input channel ``c`` at slice
    ``clamp(index + offsets[k])``. With ``offsets=(0,)`` (labels) the output is ``(C, H, W)``. A ``MetaTensor``
    keeps its metadata; its affine becomes the 2D affine of the slice (as MONAI's ``SqueezeDim`` does). A plain
    ``torch.Tensor`` stays plain (training slices need no metadata, and its bookkeeping costs more than the slicing).

    Args:
        offsets: slice offsets (default ``(0,)``; use ``(-2, 0, 2)`` for 2.5D images).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, offsets: Sequence[int] = (0,)) -> None:
        self.offsets = _check_offsets(offsets)

    def __call__(self, img: Any, index: int) -> torch.Tensor:
        """Apply the transform.

        Args:
            img: channel-first volume ``(C, H, W, D)``.
            index: the 0-based slice along the last axis.

        Returns:
            the ``(C * K, H, W)`` slice stack.

        Raises:
            ValueError: when ``img`` is not 4D or ``index`` is outside it.
        """
        t = img if isinstance(img, torch.Tensor) else _as_tensor(img)
        if t.ndim != 4:
            raise ValueError(f"expected a channel-first volume (C, H, W, D), got shape {tuple(t.shape)}.")
        index = int(index)
        idx = neighbour_indices(index, t.shape[-1], self.offsets)
        raw = t.as_tensor() if isinstance(t, MetaTensor) else t
        out = raw[..., idx].permute(0, 3, 1, 2).reshape(t.shape[0] * len(idx), *t.shape[1:3])
        if isinstance(t, MetaTensor):
            meta = dict(t.meta)
            meta["affine"] = _slice_affine(t.affine, index, 2)
            meta["slice"] = index
            meta["spatial_shape"] = np.asarray(out.shape[1:])
            return MetaTensor(out.contiguous(), meta=meta, applied_operations=list(t.applied_operations))
        return out.contiguous()


class ExtractSliced(MapTransform):
    """Dictionary version of :class:`ExtractSlice`: the slice index comes from ``data[slice_key]``.

    Args:
        keys: keys of the volumes to slice.
        slice_key: key holding the 0-based slice index (set by :func:`kvmonai.data.expand_slices` or
            :class:`RandSliceSamplerd`).
        offsets: slice offsets (default ``(0,)``; ``(-2, 0, 2)`` for 2.5D images).
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        KeyError: at call time, when ``data`` has no ``slice_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: str = "slice",
        offsets: Sequence[int] = (0,),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.transform = ExtractSlice(offsets)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the transform to every key.

        Args:
            data: the sample, with ``data[slice_key]`` set.

        Returns:
            a copy of ``data`` with the volumes replaced by slice stacks.
        """
        d = dict(data)
        if self.slice_key not in d:
            raise KeyError(
                f"sample has no {self.slice_key!r}; add RandSliceSamplerd before ExtractSliced or expand the datalist "
                "with kvmonai.data.expand_slices."
            )
        index = int(d[self.slice_key])
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], index)
        return d


class RandSliceSamplerd(Randomizable, MapTransform, MultiSampleTrait):
    """Draw ``num_samples`` slice indices from a volume; returns one shallow copy of the sample per index.

    A fraction ``pos_fraction`` of the draws comes from slices holding an organ (when the volume has any), the rest
    from all slices. Positive slices are read from ``data[nonempty_key]`` (the datalist's ``nonempty_slices``)
    when present, otherwise computed from ``data[label_key]``. Follow it with :class:`ExtractSliced`.

    MONAI's ``RandCropByPosNegLabeld`` and ``RandWeightedCropd`` do not serve: they pick crop centres voxel by voxel
    (a slice is drawn in proportion to its organ area or weight, not evenly among the slices holding an organ) and
    shift crops inwards at the volume's ends, where the 2.5D neighbours must be clamped instead; this sampler draws
    slice indices (from the precomputed ``nonempty_slices``) and copies no volume.

    Args:
        keys: keys of the volumes; the first sets the number of slices.
        num_samples: slices drawn per volume.
        pos_fraction: share of draws from non-empty slices; ``None`` for uniform sampling.
        label_key: key of the ``(C, H, W, D)`` label used when ``nonempty_key`` is missing.
        nonempty_key: key of the list of non-empty slice indices.
        slice_key: key receiving the index.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: when ``num_samples < 1`` or ``pos_fraction`` is outside ``[0, 1]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_samples: int = 1,
        pos_fraction: float | None = 0.5,
        label_key: str | None = "label",
        nonempty_key: str = "nonempty_slices",
        slice_key: str = "slice",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if pos_fraction is not None and not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1] or None, got {pos_fraction}.")
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction
        self.label_key = label_key
        self.nonempty_key = nonempty_key
        self.slice_key = slice_key
        self._indices: list[int] = []

    def randomize(self, depth: int, positives: Sequence[int]) -> None:
        """Draw the slice indices.

        Args:
            depth: number of slices.
            positives: indices of non-empty slices.
        """
        out = []
        for _ in range(self.num_samples):
            if self.pos_fraction is not None and len(positives) and self.R.random() < self.pos_fraction:
                out.append(int(positives[self.R.randint(len(positives))]))
            else:
                out.append(int(self.R.randint(depth)))
        self._indices = out

    def _positives(self, d: Mapping[Hashable, Any], depth: int) -> list[int]:
        if self.pos_fraction is None:
            return []
        if self.nonempty_key in d:
            return [int(z) for z in d[self.nonempty_key] if 0 <= int(z) < depth]
        if self.label_key is not None and self.label_key in d:
            lab = _as_tensor(d[self.label_key])
            return torch.nonzero(lab.reshape(-1, lab.shape[-1]).any(dim=0)).flatten().tolist()
        raise KeyError(
            f"RandSliceSamplerd needs {self.nonempty_key!r} or {self.label_key!r} in the sample for positive sampling; "
            "set pos_fraction=None for uniform sampling."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        """Draw the slices.

        Args:
            data: the sample with channel-first volumes.

        Returns:
            ``num_samples`` shallow copies of ``data``, each with ``slice_key`` set.

        Raises:
            KeyError: when none of ``keys`` is present.
        """
        d = dict(data)
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            raise KeyError(f"none of the keys {self.keys} is in the sample.")
        depth = int(_as_tensor(d[first]).shape[-1])
        self.randomize(depth, self._positives(d, depth))
        return [{**d, self.slice_key: z} for z in self._indices]


class ScaleIntensityRobust(Transform):
    """Percentile-based intensity scaling that is invariant to the scanner gain.

    ``(x - p_lower) / (p_upper - p_lower) * (b_max - b_min) + b_min``, optionally clipped. Because both percentiles
    scale with the gain, a volume multiplied by 10 gives the same output (the real scans differ by more than 10x).
    Percentiles are taken over the whole input, or, with ``per_slice=True``, separately for every slice along the
    last axis (all channels together). A constant input (e.g. an empty slice) maps to ``b_min``. The percentiles are
    exact (numpy, in float64) whatever the input's dtype.

    MONAI's ``ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)`` computes the
    same formula (channels together, float32 output) but does not serve. On inputs of up to 10^6 voxels it takes
    the percentiles with ``torch.quantile`` in float32, which moved outputs by up to 4.4e-6 from the exact ones
    (gamma-distributed test volumes; larger inputs go through numpy and agree to 6e-8); uint16 tensors, and integer
    arrays of up to 10^6 voxels, make it raise (``torch.quantile`` needs floats, torch cannot subtract from uint16);
    it has no per-slice mode; and a constant input warns of a division by zero (both give ``b_min``).

    Args:
        lower: lower percentile (0-100).
        upper: upper percentile (0-100).
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        per_slice: one pair of percentiles per slice along the last axis.
        dtype: output dtype.

    Raises:
        ValueError: when ``not 0 <= lower < upper <= 100``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        per_slice: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = clip
        self.per_slice = per_slice
        self.dtype = dtype

    def __call__(self, img: Any) -> torch.Tensor:
        """Apply the transform.

        Args:
            img: any array; with ``per_slice`` the last axis indexes slices.

        Returns:
            the scaled tensor (metadata kept).
        """
        t = _as_tensor(img)
        raw = (t.as_tensor() if isinstance(t, MetaTensor) else t).to(torch.float32)
        flat = raw.movedim(-1, 0).reshape(raw.shape[-1], -1) if self.per_slice else raw.reshape(1, -1)
        qs = np.quantile(flat.cpu().numpy(), [self.lower / 100.0, self.upper / 100.0], axis=1)  # (2, S)
        lo, hi = (torch.as_tensor(q, dtype=torch.float32, device=raw.device) for q in qs)
        span = hi - lo
        scale = torch.where(span > 0, (self.b_max - self.b_min) / torch.where(span > 0, span, 1.0), 0.0)
        out = (raw - lo) * scale + self.b_min  # (S,) broadcasts over the last axis; (1,) over everything
        if self.clip:
            out = out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        out = out.to(self.dtype)
        if isinstance(t, MetaTensor):
            return MetaTensor(out, meta=dict(t.meta), applied_operations=list(t.applied_operations))
        return out


class ScaleIntensityRobustd(_PerKeyd):
    """Dictionary version of :class:`ScaleIntensityRobust`.

    Args:
        keys: keys of the images to scale.
        lower: lower percentile (0-100).
        upper: upper percentile (0-100).
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        per_slice: one pair of percentiles per slice along the last axis.
        dtype: output dtype.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        per_slice: bool = False,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ScaleIntensityRobust(lower, upper, b_min, b_max, clip, per_slice, dtype)
