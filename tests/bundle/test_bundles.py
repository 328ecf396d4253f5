"""Every bundle: metadata against the schema, network in/out, TorchScript export, and a tiny train/evaluate/infer."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from kvmonai.bundle import bundle_workflow
from kvmonai.networks import pairs

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
#: every bundle: the 14 pairs, the CNN reference (unet_cnn) and the timm backbones' pairs (cheap checks)
NAMES = [f"{a}_{t}" for a, t in pairs(references=True, extra=True)]
#: what the heavy tests (export, training) run on: the 14 pairs, unet_cnn and one timm bundle (CI budget)
HEAVY = [f"{a}_{t}" for a, t in pairs(references=True)] + ["swin_kv"]
SCHEMA = Path(os.environ.get("KVMONAI_BUNDLE_SCHEMA", REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"))


def _fold(datalist: Path, fold: int) -> list[dict]:
    return [v for v in json.loads(Path(datalist).read_text())["training"] if v["fold"] == fold]


def run_workflow(root: Path, configs: list[str], workflow_type: str, overrides: dict) -> None:
    wf = bundle_workflow(root, configs, workflow_type, **{"bundle_root": str(root), **overrides})
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()


def test_every_bundle_exists():
    assert sorted(p.name for p in BUNDLES.iterdir() if p.is_dir()) == sorted(NAMES)


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"bundle schema not found at {SCHEMA} (set KVMONAI_BUNDLE_SCHEMA)")
@pytest.mark.parametrize("name", NAMES)
def test_verify_metadata(name, tmp_path):
    meta = BUNDLES / name / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
    data = json.loads(meta.read_text())
    assert data["version"] in data["changelog"]
    assert "not for diagnosis" in data["intended_use"]
    assert "kvmonai" in data["required_packages_version"]


@pytest.mark.parametrize("name", HEAVY)
def test_net_in_out_and_torchscript_export(name, tmp_path):
    """verify_net_in_out at the metadata's 224x224 and a traced TorchScript export (tiny preset for speed)."""
    root = BUNDLES / name
    common = {
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(tmp_path),
    }
    verify_net_in_out(net_id="network_def", preset="tiny", **common)
    torch.manual_seed(0)
    from kvmonai.networks import create

    arch, attention = name.rsplit("_", 1)
    net = create(arch, attention, "tiny", img_size=224).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(tmp_path / "model.pt"),
        use_trace=True,
        input_shape=[1, 3, 224, 224],
        preset="tiny",
        **common,
    )
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_train_evaluate_infer(name, prepared, tiny, copy_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_bundle(name, tmp_path)
    overrides = {**tiny, "datalist": str(prepared)}

    run_workflow(root, ["train.json"], "train", overrides)
    run_dir = root / "runs" / f"{name}_fold0_seed0"
    assert (root / "models" / "model.pt").is_file()
    assert (run_dir / "checkpoint_last.pt").is_file() and (run_dir / "training_curves.png").is_file()
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and 0 <= float(rows[0]["val_jaccard"]) <= 1

    client = MlflowClient(f"sqlite:///{run_dir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kvmonai").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    arch, attention = name.rsplit("_", 1)
    assert run.data.params["arch"] == arch and run.data.params["attention"] == attention
    assert run.data.params["fold"] == "0" and run.data.params["seed"] == "0" and int(run.data.params["params"]) > 0
    assert int(run.data.params["macs"]) > 0 and run.data.params["datalist"] == str(prepared)
    assert {"train_loss", "val_jaccard", "val_weighted_jaccard", "val_dice"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "metrics.csv", "training_curves.png", "run_settings.json"} <= artifacts

    run_workflow(root, ["train.json", "evaluate.json"], "train", overrides)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["num_volumes"] == 2 and summary["settings"]["attention"] == attention
    assert set(summary["competition"]) == {"skip", "perfect"}
    with open(run_dir / "eval" / "per_case.csv") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == sorted(v["id"] for v in _fold(prepared, 0))

    volume = json.loads(Path(prepared).read_text())["training"][0]
    image = Path(prepared).parent / volume["image"]
    out_dir = tmp_path / "pred"
    infer = {k: v for k, v in tiny.items() if k in ("preset", "img_size")}
    run_workflow(root, ["inference.json"], "infer", {**infer, "input_path": str(image), "output_dir": str(out_dir)})
    pred = nib.load(next(out_dir.glob("*_seg.nii.gz")))
    src = nib.load(image)
    assert pred.shape == (*src.shape, 3) and pred.get_data_dtype() == np.uint8
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
