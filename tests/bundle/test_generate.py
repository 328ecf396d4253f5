"""The bundles are generated from one template and never edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmonai.bundle.generate import check_bundles, render_bundle, write_bundles

REPO = Path(__file__).resolve().parents[2]


def test_committed_bundles_match_the_generator():
    problems = check_bundles(REPO / "bundles", REPO / "docs" / "measured")
    assert problems == [], "bundles differ from the template; run `kvmonai bundles`:\n" + "\n".join(problems)


def test_check_reports_hand_edits(tmp_path):
    write_bundles(tmp_path, [("setr", "kv")])
    assert any("bundle folder missing" in p for p in check_bundles(tmp_path))
    train = tmp_path / "setr_kv" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"max_epochs": 50', '"max_epochs": 5'))
    (tmp_path / "setr_kv" / "configs" / "extra.json").write_text("{}")
    problems = [p for p in check_bundles(tmp_path) if p.startswith("setr_kv/")]
    assert problems == [
        "setr_kv/configs/train.json: differs from the template",
        "setr_kv/configs/extra.json: not in the template",
    ]
    write_bundles(tmp_path, [("setr", "kv")])  # regenerating repairs both
    assert not [p for p in check_bundles(tmp_path) if p.startswith("setr_kv/")]


def test_rendered_configs_are_json_for_the_pair():
    files = render_bundle("transunet", "kvpos")
    train = json.loads(files["configs/train.json"])
    assert (train["arch"], train["attention"]) == ("transunet", "kvpos")
    assert json.loads(files["configs/metadata.json"])["name"] == "transunet_kvpos"
    assert "${" not in "".join(files.values())
    assert set(files) >= {"LICENSE", "configs/inference.json", "configs/multi_gpu_train.json", "docs/README.md"}


def test_unknown_pair():
    with pytest.raises(ValueError, match="no bundle for 'swin_unetr' with 'kvpos'"):
        render_bundle("swin_unetr", "kvpos")


def test_readme_recipe_is_read_from_train_json(tmp_path):
    """The bundle README quotes train.json's own numbers, and follows when train.json changes."""
    from kvmonai.bundle.generate import TEMPLATE_DIR, recipe_values

    train = json.loads((REPO / "bundles" / "setr_kv" / "configs" / "train.json").read_text())
    readme = render_bundle("setr", "kv")["docs/README.md"]
    assert f"AdamW (lr {train['learning_rate']}, weight decay {train['weight_decay']})" in readme
    assert f"every {train['val_interval']} epoch(s)" in readme
    assert f"{train['slices_per_volume']} 2.5D slices sampled from each of {train['volumes_per_batch']}" in readme
    assert f"({100 * train['lr_scheduler']['pct_start']:g} % warm-up" in readme
    assert "${" not in readme

    changed = json.loads((TEMPLATE_DIR / "configs" / "train.json").read_text())
    changed["learning_rate"] = 0.0005
    next(t for t in changed["train"]["random_transforms"] if t["_target_"] == "RandAffined")["rotate_range"] = 0.5
    (tmp_path / "train.json").write_text(json.dumps(changed))
    values = recipe_values(tmp_path / "train.json")
    assert values["learning_rate"] == "0.0005" and values["rotate_deg"] == "29"
    del changed["weight_decay"]
    (tmp_path / "train.json").write_text(json.dumps(changed))
    with pytest.raises(KeyError, match="no weight_decay"):
        recipe_values(tmp_path / "train.json")


def _entry(transforms: list, name: str) -> dict:
    return next(t for t in transforms if isinstance(t, dict) and t["_target_"].rsplit(".", 1)[-1] == name)


def test_readme_renders_every_recipe_setting_from_the_configs(tmp_path, monkeypatch):
    """Change every setting the README states in a copy of the template: the rendered README follows each one."""
    import shutil

    from kvmonai.bundle import generate

    template = tmp_path / "template"
    shutil.copytree(generate.TEMPLATE_DIR, template)
    train = json.loads((template / "configs" / "train.json").read_text())
    infer = json.loads((template / "configs" / "inference.json").read_text())
    rand = train["train"]["random_transforms"]
    for config in (train, infer):
        config["slice_offsets"] = [-1, 0, 1, 3]
        config["img_size"] = 96
        _entry(config["intensity"], "ScaleIntensityRobustd").update(lower=1.5, upper=98.5, b_min=-1.0, b_max=2.0)
    train.update(slices_per_volume=7, volumes_per_batch=5, positive_fraction=0.35, learning_rate=0.0007)
    train.update(weight_decay=0.003, max_epochs=33, val_interval=4, amp=False, output_prior=0.04)
    _entry(train["train"]["volume_resize"], "Resized")["mode"] = ["bicubic", "nearest"]
    _entry(rand, "RandAffined").update(prob=0.45, rotate_range=0.7, scale_range=0.15, translate_range=11)
    _entry(rand, "RandScaleIntensityd").update(factors=0.17, prob=0.35)
    _entry(rand, "RandGaussianNoised").update(std=0.03, prob=0.4)
    train["loss"].update(gamma=2.0, lambda_dice=0.7, lambda_focal=1.3)
    train["optimizer"]["_target_"] = "torch.optim.Adam"
    train["lr_scheduler"].update(pct_start=0.25, anneal_strategy="linear")
    _entry(train["train"]["handlers"], "LrScheduleHandler")["epoch_level"] = True
    train["validate"]["key_metric"] = {"val_iou": train["validate"]["key_metric"]["val_jaccard"]}
    del train["validate"]["additional_metrics"]["val_dice"]
    _entry(train["validate"]["postprocessing"]["transforms"], "AsDiscreted")["threshold"] = 0.45
    train["validate"]["inferer"].update(_target_="SliceInferer", sw_batch_size=9)
    infer.update(threshold=0.35, precision="bf16", fuse=False, runtime="openvino")
    infer["inferer"].update(_target_="SliceInferer", sw_batch_size=6)
    _entry(infer["postprocessing"]["transforms"], "SaveImaged")["output_dtype"] = "$torch.float32"
    (template / "configs" / "train.json").write_text(json.dumps(train))
    (template / "configs" / "inference.json").write_text(json.dumps(infer))
    monkeypatch.setattr(generate, "TEMPLATE_DIR", template)
    files = generate.render_bundle("swin_unetr", "kv")
    readme = " ".join(files["docs/README.md"].split())
    expected = [
        "reads 4 neighbouring slices (z-1, z, z+1, z+3, clamped",
        "predicts 3 independent sigmoid channels",
        "(`SliceInferer`, 9 slices per forward pass in validation",
        "7 2.5D slices sampled from each of 5 training volumes per step (35 % of them",
        "volumes scaled to [-1, 2] by their 1.5 and 98.5 percentiles",
        "(image `bicubic`, labels `nearest`)",
        "random affine (probability 0.45: rotation up to 40°, scale 15 %, shift 11 px)",
        "random intensity scaling (±17 %, probability 0.35) and Gaussian noise (std 0.03, probability 0.4)",
        "loss Dice + focal loss (gamma 2) on sigmoid outputs (`DiceFocalLoss`, weights 0.7 / 1.3, Dice over the "
        "whole batch)",
        "organ prior 0.04",
        "Adam (lr 0.0007, weight decay 0.003) with a `OneCycleLR` schedule (25 % warm-up, linear annealing, "
        "stepped per epoch); 33 epochs; mixed precision `amp` false (fp32)",
        "validation every 4 epoch(s)",
        "thresholded at 0.45), key metric `val_iou` (also `val_weighted_jaccard`); the best model by `val_iou`",
        "| preset / input size | `paper` / 96 |",
        "| epochs / validation interval | 33 / 4 |",
        "| batch | 5 volumes x 7 slices |",
        "| learning rate | 0.0007 |",
        "| mixed precision | `amp` false |",
        "scaled to [-1, 2] by its 1.5 and 98.5 percentiles",
        "the network sees `(B, 4, img_size, img_size)`",
        "thresholds the sigmoid at 0.35 and writes a `float32` NIfTI with 3 channels",
        "`SliceInferer` with 6 slices per forward pass; runtime `openvino`; precision `bf16`; `channels_last` False; "
        "`fuse` False",
        '--input_shape "[1, 4, 96, 96]"',
    ]
    assert [e for e in expected if e not in readme] == []
    for stale in ("AdamW", "0.002", "99.5", "z-2", "val_jaccard", "val_dice", "uint8", "`auto`", "[1, 3, 224"):
        assert stale not in readme, stale
    metadata = json.loads(files["configs/metadata.json"])
    assert metadata["image_classes"].startswith("4 neighbouring MR slices (z-1, z, z+1, z+3) as channels")
    assert "[-1, 2] by the 1.5 and 98.5 percentiles" in metadata["image_classes"]


def test_committed_readmes_state_their_inference_settings():
    """Per architecture: the README's channels-last and fuse defaults are those of the bundle's inference.json."""
    for name in ("setr_kv", "swin_unetr_kv"):
        infer = json.loads((REPO / "bundles" / name / "configs" / "inference.json").read_text())
        readme = " ".join((REPO / "bundles" / name / "docs" / "README.md").read_text().split())
        channels_last = {"$True": "True", "$False": "False"}[infer["channels_last"]]
        assert f"`channels_last` {channels_last}; `fuse` {infer['fuse']}" in readme
        assert f"thresholds the sigmoid at {infer['threshold']}" in readme


def test_configs_must_agree_on_what_the_network_sees(tmp_path):
    from kvmonai.bundle.generate import TEMPLATE_DIR, recipe_values

    infer = json.loads((TEMPLATE_DIR / "configs" / "inference.json").read_text())
    _entry(infer["intensity"], "ScaleIntensityRobustd")["upper"] = 99.0
    (tmp_path / "inference.json").write_text(json.dumps(infer))
    with pytest.raises(ValueError, match="intensity is .* inference must prepare volumes as training did"):
        recipe_values(inference_config=tmp_path / "inference.json")
    train = json.loads((TEMPLATE_DIR / "configs" / "train.json").read_text())
    _entry(train["train"]["random_transforms"], "RandAffined")["prob"] = "$0.5"
    (tmp_path / "train.json").write_text(json.dumps(train))
    with pytest.raises(ValueError, match="RandAffined#prob is '\\$0.5'; the bundle README quotes it"):
        recipe_values(tmp_path / "train.json")


def test_timm_bundles_pin_timm_as_the_constraints_do():
    """A bundle of a timm backbone lists timm (at constraints/cpu.txt's pin) and says how to install it; others not."""
    import re

    pin = re.search(r"^timm==(\S+)$", (REPO / "constraints" / "cpu.txt").read_text(), flags=re.MULTILINE).group(1)
    files = render_bundle("swin", "kv")
    assert json.loads(files["configs/metadata.json"])["required_packages_version"]["timm"] == pin
    assert f"also needs timm {pin} (`pip install 'kvmonai[timm]'`)" in files["docs/README.md"]
    other = render_bundle("setr", "kv")
    assert "timm" not in json.loads(other["configs/metadata.json"])["required_packages_version"]
    assert "also needs" not in other["docs/README.md"]
