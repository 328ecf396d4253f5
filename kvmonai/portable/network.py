"""The network of an exported bundle: a ``torch.export`` program (``models/model.pt2``), called like a module.

``torch.export.load(path).module()`` gives a graph module that refuses ``.eval()`` ("not supported yet"), which
MONAI's evaluators call on every iteration; the program was exported in eval mode, so :class:`ExportedNetwork`
keeps that mode and only records the flag. On a GPU the program is moved with ``torch.export``'s device pass, since
devices captured in the graph do not follow ``.to()``. MONAI loads TorchScript (``load_net_with_metadata``) but not
exported programs, and SwinUNETR cannot be scripted, hence this small wrapper.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import InputFormatError, InputNotFoundError

__all__ = ["ExportedNetwork"]


class ExportedNetwork(nn.Module):
    """A ``.pt2`` exported program as an ``nn.Module`` in eval mode.

    Args:
        path: the ``.pt2`` file written by ``torch.export.save``.
        device: where to run it (default CPU).

    Raises:
        InputNotFoundError: (a ``FileNotFoundError``) when ``path`` does not exist.
        InputFormatError: (a ``ValueError``) when ``path`` is not an exported program.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        super().__init__()
        if not os.path.isfile(path):
            raise InputNotFoundError(f"{path}: no such exported network; the bundle's models/ folder is incomplete.")
        try:
            program = torch.export.load(os.fspath(path))
        except Exception as e:  # torch raises several types for foreign or truncated files
            raise InputFormatError(f"{path}: not a torch.export program ({e}); export the bundle again.") from e
        device = torch.device(device or "cpu")
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        self.program = program.module()
        self.path = os.fspath(path)
        self.train(False)

    def train(self, mode: bool = True) -> ExportedNetwork:
        """Record the mode only: the program was exported in eval mode and cannot switch."""
        if mode:
            raise ValueError(f"{self.path}: an exported network is for inference only; it cannot be trained.")
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the exported program on a batch of slices ``(B, C, H, W)``."""
        return self.program(x)
