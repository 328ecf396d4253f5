"""Checks that the network tests share, as fixtures that return the check (the test folders are not packages)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch


def _train_losses(
    net: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> list[float]:
    """The loss of each of ``steps`` optimisation steps of ``net`` on one batch ``(x, target)``."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _assert_same_init(build: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    """Builds the network twice from the same seed and asserts equal state dicts; returns the first network."""
    torch.manual_seed(seed)
    a = build()
    torch.manual_seed(seed)
    b = build()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    return a


def _assert_trace_round_trip(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Traces ``net`` on ``x``, saves and loads the trace in memory, and compares its output with ``net``'s."""
    traced = torch.jit.trace(net, x, check_trace=False)  # compared below, after save and load
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), net(x))


@pytest.fixture
def train_losses() -> Callable[..., list[float]]:
    """:func:`_train_losses`: the per-step losses of a short fit on one batch."""
    return _train_losses


@pytest.fixture
def assert_same_init() -> Callable[..., torch.nn.Module]:
    """:func:`_assert_same_init`: the same seed builds the same weights."""
    return _assert_same_init


@pytest.fixture
def assert_trace_round_trip() -> Callable[[torch.nn.Module, torch.Tensor], None]:
    """:func:`_assert_trace_round_trip`: a TorchScript trace survives save and load."""
    return _assert_trace_round_trip
