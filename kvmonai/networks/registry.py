"""The architecture registry: one record per network, the only place that lists architectures and attentions.

Adding an architecture is one :class:`Architecture` entry in :data:`ARCHITECTURE_REGISTRY` plus its module in
``kvmonai/networks/nets/`` (a class taking ``in_channels``, ``out_channels``, ``img_size`` and ``attention``, and a
``PRESETS`` dict of constructor arguments for ``"paper"``, ``"small"`` and ``"tiny"``; several architectures may
share one module, each naming its own dict with ``presets_attr``). The factory
(:func:`kvmonai.networks.create`), the study, the benchmarks and the bundle generator (titles, references,
channels-last default) read everything they need about a network from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from kvmonai.utils import check_option

__all__ = [
    "ARCHITECTURE_REGISTRY",
    "ATTENTION_REGISTRY",
    "PRESETS",
    "PRESET_IMG_SIZE",
    "Architecture",
    "Attention",
    "lookup",
]

#: network sizes every architecture defines (in its module's ``PRESETS``)
PRESETS: tuple[str, ...] = ("paper", "small", "tiny")
#: the input size each preset is designed and documented for (an architecture may override it)
PRESET_IMG_SIZE: Mapping[str, int] = MappingProxyType({"paper": 224, "small": 128, "tiny": 64})


@dataclass(frozen=True)
class Attention:
    """One attention variant as the bundles and reports name and describe it.

    Args:
        name: the value of ``attention=`` (``"kv"``).
        title: the name in tables and titles (``"KV"``).
        description: one sentence for a bundle README.
    """

    name: str
    title: str
    description: str


#: every attention an architecture may offer, in report order
ATTENTION_REGISTRY: Mapping[str, Attention] = MappingProxyType(
    {
        a.name: a
        for a in (
            Attention(
                "qkv", "QKV", "standard multi-head self-attention (query, key and value projections), the baseline."
            ),
            Attention(
                "kv",
                "KV",
                "Borji's key-value attention: no query projection, the keys are used on both sides (logits K Kᵀ), "
                "which saves one d x d projection per attention layer.",
            ),
            Attention(
                "kvpos",
                "KV+Pos",
                "Borji's key-value attention plus his 2D positional correction (a learned temperature and a per-key "
                "bias from 50 sinusoidal channels over the (query index, key index) grid, 51 parameters per layer).",
            ),
            Attention(
                "cnn",
                "no",
                "no attention at all: a convolutional reference trained with the same recipe and data, so the study "
                "shows what the transformers cost and buy.",
            ),
        )
    }
)


@dataclass(frozen=True)
class Architecture:
    """Everything kvmonai knows about one network.

    Args:
        name: registry key and bundle prefix (``"setr"``).
        target: ``"module:Class"`` of the network; imported on first use.
        attentions: the attention variants it offers, in report order (keys of :data:`ATTENTION_REGISTRY`).
        title: bundle title.
        short: what kind of network it is, in a few words.
        reference: the paper to cite.
        reference_network: a reference row of the study (no attention), not one of the compared transformers.
        attention_note: why an attention is missing, appended to the error for one it does not offer.
        channels_last: the bundles' inference default for ``channels_last`` memory format.
        img_sizes: input size per preset, where it differs from :data:`PRESET_IMG_SIZE`.
        default_study: one of the transformers the default study compares (``kvmonai.networks.STUDY_ARCHITECTURES``).
            ``False`` for networks offered beside them (the timm backbones), which the study, benchmark and
            complexity commands take by name (``--archs``, ``--pairs``) and which have bundles all the same.
        presets_attr: the name of the preset dict in the network's module.
        requires: distributions beyond kvmonai's own dependencies that the network needs, with the version its
            bundles pin (``required_packages_version``; the pin of ``constraints/cpu.txt``).
    """

    name: str
    target: str
    attentions: tuple[str, ...]
    title: str
    short: str
    reference: str
    reference_network: bool = False
    attention_note: str = ""
    channels_last: bool = True
    img_sizes: Mapping[str, int] = field(default_factory=dict)
    default_study: bool = True
    presets_attr: str = "PRESETS"
    requires: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attention in self.attentions:
            check_option(f"attention of {self.name!r}", attention, tuple(ATTENTION_REGISTRY))

    @property
    def network_class(self) -> type[nn.Module]:
        """The network class (its module is imported now)."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def presets(self) -> Mapping[str, Mapping[str, Any]]:
        """Constructor arguments of each preset: the ``presets_attr`` dict (``PRESETS``) of the network's module."""
        return getattr(importlib.import_module(self.target.split(":")[0]), self.presets_attr)

    def img_size(self, preset: str) -> int:
        """The input size ``preset`` is designed for."""
        check_option("preset", preset, PRESETS)
        return self.img_sizes.get(preset, PRESET_IMG_SIZE[preset])

    def check_attention(self, attention: str) -> str:
        """Return ``attention`` if this architecture offers it.

        Raises:
            ValueError: naming the architecture, its attentions and (where set) why one is missing.
        """
        return check_option(f"attention for {self.name!r}", attention, self.attentions, self.attention_note)


_TRANSFORMER_ATTENTIONS = ("qkv", "kv", "kvpos")
_TIMM_SEGMENTER = "kvmonai.networks.nets.timm_seg:TimmSegmenter"
_TIMM = MappingProxyType({"timm": "1.0.31"})  # the pin of constraints/cpu.txt (a test compares them)

#: name -> record, in report order: the five transformers the study compares, the reference networks, then the timm
#: backbones offered beside the study (``default_study=False``)
ARCHITECTURE_REGISTRY: Mapping[str, Architecture] = MappingProxyType(
    {
        a.name: a
        for a in (
            Architecture(
                "setr",
                "kvmonai.networks.nets.setr:SETR",
                _TRANSFORMER_ATTENTIONS,
                title="SETR-PUP (ViT-B/16 encoder, progressive upsampling decoder)",
                short="a pure transformer",
                reference="Zheng S et al. Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective "
                "with Transformers. CVPR 2021. arXiv:2012.15840",
            ),
            Architecture(
                "transunet",
                "kvmonai.networks.nets.transunet:TransUNet",
                _TRANSFORMER_ATTENTIONS,
                title="TransUNet (R50-ViT-B/16 hybrid encoder, cascaded upsampler)",
                short="a hybrid CNN-transformer",
                reference="Chen J et al. TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation. "
                "arXiv:2102.04306, 2021",
            ),
            Architecture(
                "cvt",
                "kvmonai.networks.nets.cvt:CvTUNet",
                _TRANSFORMER_ATTENTIONS,
                title="CvT-13 U-shaped segmenter (convolutional token embedding and projections)",
                short="a hybrid convolutional transformer",
                reference="Wu H et al. CvT: Introducing Convolutions to Vision Transformers. ICCV 2021. "
                "arXiv:2103.15808",
            ),
            Architecture(
                "unetr",
                "kvmonai.networks.nets.unetr:KVUNETR",
                _TRANSFORMER_ATTENTIONS,
                title="UNETR (MONAI, 2D, ViT-B/16 encoder)",
                short="a transformer encoder with a convolutional decoder",
                reference="Hatamizadeh A et al. UNETR: Transformers for 3D Medical Image Segmentation. WACV 2022. "
                "arXiv:2103.10497",
            ),
            Architecture(
                "swin_unetr",
                "kvmonai.networks.nets.swin_unetr:KVSwinUNETR",
                ("qkv", "kv"),
                title="SwinUNETR (MONAI, 2D, shifted-window transformer encoder)",
                short="a hierarchical shifted-window transformer",
                reference="Hatamizadeh A et al. Swin UNETR: Swin Transformers for Semantic Segmentation of Brain "
                "Tumors in MRI Images. BrainLes 2021. arXiv:2201.01266",
                attention_note="Its relative position bias is kept in both; KV+Pos does not apply to windows.",
                # channels-last pays on oneDNN convolutions but costs SwinUNETR's window partitioning more than it
                # saves (docs/benchmarks.md, whole-case timings)
                channels_last=False,
            ),
            Architecture(
                "unet",
                "kvmonai.networks.nets.unet:UNetCNN",
                ("cnn",),
                title="U-Net (MONAI BasicUNet, 2D): the convolutional reference of the study",
                short="a convolutional network without attention, the study's reference row",
                reference="Ronneberger O et al. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
                "MICCAI 2015. arXiv:1505.04597",
                reference_network=True,
            ),
            Architecture(
                "crossvit",
                _TIMM_SEGMENTER,
                ("qkv", "kv"),
                title="CrossViT-15 encoder (timm; branches of patch 8 and 16) and U-Net decoder",
                short="a dual-branch multi-scale vision transformer from timm",
                reference="Chen C-F, Fan Q, Panda R. CrossViT: Cross-Attention Multi-Scale Vision Transformer for "
                "Image Classification. ICCV 2021. arXiv:2103.14899",
                attention_note="Its branches are fused by cross-attention (the query is the other branch's class "
                "token), which KV cannot replace and which stays QKV in every variant; KV+Pos is offered only "
                "where every attention is global self-attention.",
                default_study=False,
                presets_attr="CROSSVIT_PRESETS",
                requires=_TIMM,
            ),
            Architecture(
                "swin",
                _TIMM_SEGMENTER,
                ("qkv", "kv"),
                title="Swin-T encoder (timm; shifted windows) and U-Net decoder",
                short="a hierarchical shifted-window transformer from timm",
                reference="Liu Z et al. Swin Transformer: Hierarchical Vision Transformer using Shifted Windows. "
                "ICCV 2021. arXiv:2103.14030",
                attention_note="Its relative position bias is kept in both; KV+Pos's 1D token-index encoding does not "
                "apply to shifted windows.",
                channels_last=False,
                default_study=False,
                presets_attr="SWIN_PRESETS",
                requires=_TIMM,
            ),
            Architecture(
                "nextvit",
                _TIMM_SEGMENTER,
                ("qkv", "kv"),
                title="Next-ViT-S encoder (timm; convolution and E-MHSA blocks) and U-Net decoder",
                short="a hierarchical hybrid CNN-transformer from timm",
                reference="Li J et al. Next-ViT: Next Generation Vision Transformer for Efficient Deployment in "
                "Realistic Industrial Scenarios. arXiv:2207.05501, 2022",
                attention_note="Its E-MHSA attends from every token to spatially pooled keys, so there is no one "
                "token grid for KV+Pos's index encoding.",
                default_study=False,
                presets_attr="NEXTVIT_PRESETS",
                requires=_TIMM,
            ),
        )
    }
)


def lookup(arch: str) -> Architecture:
    """The registry record of ``arch``.

    Raises:
        ValueError: if ``arch`` is not registered (the message lists the names).
    """
    return ARCHITECTURE_REGISTRY[check_option("arch", arch, tuple(ARCHITECTURE_REGISTRY))]
