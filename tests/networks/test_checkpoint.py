"""Checkpoint files: atomic writes, safe loads and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from kvmonai.networks.checkpoint import CheckpointError, load_checkpoint, load_weights, save_atomic


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


def _train(net: torch.nn.Module, max_epochs: int, handlers, evaluator=None) -> list[int]:
    """Train ``net`` for ``max_epochs`` on 3 toy batches; returns the epochs that ran.

    ``handlers(net, optimizer)`` returns the handlers to attach; with ``evaluator``, every epoch first records itself
    as the evaluator's best epoch (as MONAI's evaluator does when the key metric improves).
    """
    from ignite.engine import Engine, Events

    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    ran: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: ran.append(e.state.epoch))
    if evaluator is not None:
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: setattr(evaluator.state, "best_metric_epoch", e.state.epoch)
        )
    for handler in handlers(net, opt):
        handler.attach(trainer)
    torch.manual_seed(0)
    trainer.run([torch.randn(4, 2) for _ in range(3)], max_epochs=max_epochs)
    return ran


def test_resume_restores_model_optimizer_epoch_and_best_metric(tmp_path):
    """ResumeFromCheckpoint is MONAI's CheckpointLoader plus the trainer, the best metric and clear errors."""
    from ignite.engine import Engine, Events
    from monai.handlers import CheckpointLoader

    from kvmonai.bundle import EpochCheckpoint, ResumeFromCheckpoint

    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric = 0.75
    torch.manual_seed(1)
    net = torch.nn.DataParallel(torch.nn.Linear(2, 1))  # saved unwrapped: ignite loads into the inner module

    def save(n, o):
        return [EpochCheckpoint(str(tmp_path), {"model": n, "optimizer": o}, evaluator)]

    assert _train(net, 2, save, evaluator) == [1, 2]
    path = tmp_path / "checkpoint_last.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and ckpt["best"] == {"metric": 0.75, "epoch": 2}
    assert sorted(ckpt["model"]) == ["bias", "weight"] and "state" in ckpt["optimizer"]

    fresh = Engine(lambda e, b: None)
    resumed = torch.nn.DataParallel(torch.nn.Linear(2, 1))
    at_start = {}

    def resume(n, o):
        handler = ResumeFromCheckpoint(str(path), {"model": n, "optimizer": o}, fresh)
        assert isinstance(handler, CheckpointLoader)

        class Probe:  # after the resume (attached later, same event): the weights the run continues from
            def attach(self, engine):
                engine.add_event_handler(
                    Events.STARTED, lambda e: at_start.update({k: v.clone() for k, v in n.module.state_dict().items()})
                )

        return [handler, Probe()]

    assert _train(resumed, 4, resume) == [3, 4]  # epochs 1 and 2 are not trained again
    for key, value in ckpt["model"].items():
        torch.testing.assert_close(at_start[key], value)
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (0.75, 2)
    with pytest.raises(ValueError, match="load_dict must name the objects"):
        ResumeFromCheckpoint(str(path), {})
    with pytest.raises(ValueError, match="not 'trainer'"):
        ResumeFromCheckpoint(str(path), {"trainer": resumed})


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "cannot resume: .* does not exist"),
        ("truncated", "truncated or not a torch checkpoint"),
        ("no_entry", r"it has no \['lr_scheduler'\] entries"),
        ("other_model", "its model does not fit Linear .*wrong shape: weight.*another architecture"),
        ("finished", "already finished epoch 2 of max_epochs=2: raise the number of epochs"),
        ("past_max", "already finished epoch 2 of max_epochs=1: raise the number of epochs"),
    ],
)
def test_resume_errors_say_what_to_do(tmp_path, case, match):
    from kvmonai.bundle import EpochCheckpoint, ResumeFromCheckpoint

    _train(torch.nn.Linear(2, 1), 2, lambda n, o: [EpochCheckpoint(str(tmp_path), {"model": n, "optimizer": o})])
    path = tmp_path / "checkpoint_last.pt"
    net, max_epochs, extra = torch.nn.Linear(2, 1), 4, {}
    if case == "missing":
        path = tmp_path / "nope.pt"
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif case == "no_entry":
        extra["lr_scheduler"] = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(net.parameters(), lr=0.1), 1)
    elif case == "other_model":
        net = torch.nn.Linear(3, 1)
    else:
        max_epochs = 2 if case == "finished" else 1

    def resume(n, o):
        return [ResumeFromCheckpoint(str(path), {"model": n, "optimizer": o, **extra})]

    with pytest.raises(CheckpointError, match=match):
        _train(net, max_epochs, resume)
