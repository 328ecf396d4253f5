"""Checkpoint files: atomic writes, safe loads and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from kvmonai.bundle.checkpoint import CheckpointError, load_checkpoint, load_weights, save_atomic


def test_atomic_save_roundtrip(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = save_atomic({"model": net.state_dict(), "epoch": 3}, tmp_path / "sub" / "ckpt.pt")
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3
    other = torch.nn.Linear(3, 2)
    load_weights(other, path)
    torch.testing.assert_close(other.weight, net.weight)


def test_failed_save_keeps_previous_file(tmp_path):
    path = save_atomic({"a": torch.zeros(1)}, tmp_path / "ckpt.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unsaveable()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_missing_empty_truncated_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    good = save_atomic({"w": torch.randn(100, 100)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    # a pickle that would run code when loaded without weights_only
    torch.save({"evil": pickle.loads(pickle.dumps(Exception("x")))}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_weights_of_another_model(tmp_path):
    save_atomic(torch.nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="wrong shape: weight"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="missing: 0.bias, 0.weight"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "w.pt")


def test_load_weights_maps_new_files_and_reads_legacy_ones(tmp_path):
    """Weights load through mmap; a file in torch's legacy (non-zip) format still loads."""
    net = torch.nn.Linear(4, 2)
    for name, zipfile in (("new.pt", True), ("legacy.pt", False)):
        torch.save(net.state_dict(), tmp_path / name, _use_new_zipfile_serialization=zipfile)
        other = torch.nn.Linear(4, 2)
        load_weights(other, tmp_path / name)
        torch.testing.assert_close(other.weight, net.weight)
