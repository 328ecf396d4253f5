"""The app's bundle discovery, options, training lists and statistics (main environment; no monailabel needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kvmonai.label import APP_DIR, bundles
from kvmonai.label.datalist import label_values, split_items
from kvmonai.label.handlers import TrainStatsWriter
from kvmonai.networks import pairs

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
LABELS = {"large_bowel": 1, "small_bowel": 2, "stomach": 3}


def test_app_folder_holds_main_py():
    assert (APP_DIR / "main.py").is_file()
    assert "KVMonaiLabelApp" in (APP_DIR / "main.py").read_text()


def test_default_bundles_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("KVMONAI_BUNDLES", raising=False)
    assert bundles.default_bundles_dir() == BUNDLES
    monkeypatch.setenv("KVMONAI_BUNDLES", str(tmp_path))
    assert bundles.default_bundles_dir() == tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ("preset=tiny,img_size=64", {"preset": "tiny", "img_size": 64}),
        (" amp = false , inferer#sw_batch_size=4", {"amp": False, "inferer#sw_batch_size": 4}),
        ('{"slice_offsets": [-1, 0, 1], "preset": "small"}', {"slice_offsets": [-1, 0, 1], "preset": "small"}),
        # the study recipe's network settings (kvmonai/bundle/template/configs/study.json), then more pairs
        ("study, amp=false", {"preset": "small", "img_size": 64, "amp": False}),
    ],
)
def test_parse_overrides(text, expected):
    assert bundles.parse_overrides(text) == expected


@pytest.mark.parametrize(("text", "match"), [("preset", "id=value"), ("=3", "id=value"), ("{nope", "not valid JSON")])
def test_parse_overrides_errors(text, match):
    with pytest.raises(ValueError, match=match):
        bundles.parse_overrides(text)


def test_every_bundle_opens_with_the_ids_the_app_uses():
    names = [p.name for p in bundles.find_bundles(BUNDLES)]
    # the 14 pairs, the CNN reference and the timm backbones' bundles
    assert names == sorted(f"{a}_{t}" for a, t in pairs(references=True, extra=True))
    assert "setr_kv" in names and "unet_cnn" in names and "swin_kv" in names
    for path in bundles.find_bundles(BUNDLES):
        spec = bundles.open_bundle(path, {"preset": "tiny", "img_size": 64, "max_epochs": 2})
        assert spec.name == path.name and spec.labels == LABELS
        assert spec.weights == path.resolve() / "models" / "model.pt"
        assert spec.infer_overrides == {"preset": "tiny", "img_size": 64}  # max_epochs is a train.json id only
        assert spec.train_overrides == {"preset": "tiny", "img_size": 64, "max_epochs": 2}
        message = spec.missing_weights_message()
        assert f"bundle '{spec.name}'" in message and f"POST /train/{spec.name}" in message


def _bundle_lacking(root: Path, config: str, key: str) -> Path:
    """A copy of setr_kv's configs at ``root`` with the id ``key`` deleted from ``configs/<config>``."""
    shutil.copytree(BUNDLES / "setr_kv" / "configs", root / "configs")
    path = root / "configs" / config
    parsed = json.loads(path.read_text())
    del parsed[key]
    path.write_text(json.dumps(parsed))
    return root


def test_open_bundle_errors(tmp_path):
    with pytest.raises(ValueError, match="inference.json does not exist"):
        bundles.open_bundle(tmp_path)
    with pytest.raises(ValueError, match="'prest' is not an id of setr_kv"):
        bundles.open_bundle(BUNDLES / "setr_kv", {"prest": "tiny"})
    with pytest.raises(ValueError, match="bundle_root"):
        bundles.open_bundle(BUNDLES / "setr_kv", {"bundle_root": "/x"})
    broken = _bundle_lacking(tmp_path / "broken", "inference.json", "inferer")
    with pytest.raises(ValueError, match=r"inference.json: bundle 'broken' lacks the ids \['inferer'\]"):
        bundles.open_bundle(broken)


def test_find_bundles_selection_and_errors(tmp_path):
    assert [p.name for p in bundles.find_bundles(BUNDLES, ["setr_kv", "cvt_qkv", "setr_kv"])] == ["setr_kv", "cvt_qkv"]
    assert len(bundles.find_bundles(BUNDLES, ["all"])) == len(pairs(references=True, extra=True))
    with pytest.raises(ValueError, match=r"\['setr_xx'\] not found"):
        bundles.find_bundles(BUNDLES, ["setr_xx"])
    with pytest.raises(ValueError, match="does not exist"):
        bundles.find_bundles(tmp_path / "none")
    with pytest.raises(ValueError, match="holds no bundle"):
        bundles.find_bundles(tmp_path)


def test_settings_from_conf(monkeypatch):
    monkeypatch.delenv("KVMONAI_BUNDLES", raising=False)
    s = bundles.LabelAppSettings.from_conf({"models": "setr_kv, unetr_kv", "overrides": "preset=small,img_size=128"})
    assert s.bundles_dir == BUNDLES and s.models == ("setr_kv", "unetr_kv")
    assert [b.name for b in s.bundles()] == ["setr_kv", "unetr_kv"]
    assert s.bundles()[0].infer_overrides == {"preset": "small", "img_size": 128}
    assert bundles.LabelAppSettings.from_conf({"bundles": str(BUNDLES)}).models == ()


def test_study_loading_reads_studies_like_inference():
    """The app overrides train.json's ``loading`` id; the rest of the preprocessing is the bundle's own."""
    spec = bundles.open_bundle(BUNDLES / "setr_kv")
    out = bundles.study_loading(spec)
    assert [t["_target_"] for t in out] == ["kvmonai.data.LoadVolumed", "kvmonai.label.transforms.LabelMapToChannelsd"]
    assert out[0]["keys"] == ["image", "label"] and out[1]["values_key"] == "label_values"
    assert out[1]["num_classes"] == 3 and bundles.study_loading(spec, num_classes=2)[1]["num_classes"] == 2
    with pytest.raises(ValueError, match="num_classes must be positive"):
        bundles.study_loading(spec, num_classes=0)
    bundle, app = spec.parser("train"), spec.parser("train")
    app["loading"] = out
    for id_ in ("train#preprocessing", "validate#preprocessing"):
        kept = [type(t).__name__ for t in bundle.get_parsed_content(id_).transforms]
        served = [type(t).__name__ for t in app.get_parsed_content(id_).transforms]
        assert kept[:2] == ["LoadImaged", "EnsureChannelFirstd"]
        assert served == ["LoadVolumed", "LabelMapToChannelsd", *kept[2:]]  # only the loading differs


def test_adapted_transforms_load_a_study_and_its_label(tmp_path):
    """Image and label map of a RAS study come out as the training recipe wants them: PLS, 3 channels."""
    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigParser

    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((6, 4, 3)).astype(np.float32), np.eye(4)), tmp_path / "i.nii.gz")
    label = rng.integers(0, 4, (6, 4, 3)).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "l.nii.gz")
    parser = ConfigParser(
        {"t": {"_target_": "Compose", "transforms": bundles.study_loading(bundles.open_bundle(BUNDLES / "setr_kv"))}}
    )
    d = parser.get_parsed_content("t")(
        {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz"), "label_values": [1, 2, 3]}
    )
    assert d["image"].shape == (1, 4, 6, 3) and d["label"].shape == (3, 4, 6, 3)
    pls = np.flip(label.transpose(1, 0, 2), axis=(0, 1))  # RAS (x, y) -> PLS (rows = -y, columns = -x)
    assert np.array_equal(d["label"][1].numpy(), (pls == 2).astype(np.float32))


def test_bundle_without_a_loading_id_is_refused(tmp_path):
    root = _bundle_lacking(tmp_path / "b", "train.json", "loading")
    with pytest.raises(ValueError, match=r"train.json: bundle 'b' lacks the ids \['loading'\]"):
        bundles.open_bundle(root)


def test_label_values():
    assert label_values(None, LABELS) == [1, 2, 3]
    slicer = [{"name": "stomach", "idx": 1}, {"name": "large_bowel", "idx": 2}, {"name": "small_bowel", "idx": 3}]
    assert label_values(slicer, LABELS) == [2, 3, 1]
    assert label_values([{"name": "stomach", "idx": 1}], LABELS) == [-1, -1, 1]  # organs without a segment
    assert label_values([{"name": "liver", "idx": 1}], LABELS) == [1, 2, 3]  # no organ named: app values
    assert label_values([{"name": "stomach", "idx": "x"}], LABELS) == [1, 2, 3]


def test_split_items():
    items = [{"id": str(i)} for i in range(10)]
    train, val, in_sample = split_items(items, 0.2)
    assert len(train) == 8 and len(val) == 2 and not in_sample
    assert {i["id"] for i in train} | {i["id"] for i in val} == {str(i) for i in range(10)}
    assert split_items(items, 0.2) == (train, val, False)  # reproducible
    assert len(split_items(items[:2], 0.01)[1]) == 1  # at least one held out
    assert len(split_items(items[:2], 0.9)[0]) == 1  # at least one trained on
    train, val, in_sample = split_items(items[:1], 0.2)
    assert in_sample and train == val == [{"id": "0"}]
    assert split_items(items, 0.0)[2]
    with pytest.raises(ValueError, match="no labelled studies"):
        split_items([], 0.2)
    with pytest.raises(ValueError, match="val_split"):
        split_items(items, 1.0)


def test_train_stats_writer(tmp_path):
    from ignite.engine import Engine, Events

    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.25, 1
    evaluator.state.key_metric_name = "val_jaccard"
    evaluator.state.metrics = {"val_jaccard": torch.tensor(0.25)}
    trainer = Engine(lambda e, b: [{"loss": torch.tensor(0.5)}])
    seen = []
    writer = TrainStatsWriter(tmp_path / "s.json", evaluator, run_dir=tmp_path)
    writer.attach(trainer)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: seen.append(json.loads((tmp_path / "s.json").read_text()))
    )
    trainer.run([0, 1], max_epochs=2)
    assert [s["epoch"] for s in seen] == [1, 2] and "current_time" in seen[0] and "total_time" in seen[1]
    assert (
        seen[1]["total_epochs"] == 2 and seen[1]["best_metric"] == 0.25 and seen[1]["key_metric_name"] == "val_jaccard"
    )
    assert seen[1]["eval"]["metrics"] == {"val_jaccard": 0.25} and seen[1]["train"]["loss"] == 0.5
