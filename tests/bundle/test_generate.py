"""The bundles are generated from one template and never edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmonai.bundle.generate import check_bundles, render_bundle, write_bundles

REPO = Path(__file__).resolve().parents[2]


def test_committed_bundles_match_the_generator():
    problems = check_bundles(REPO / "bundles", REPO / "docs" / "measured")
    assert problems == [], "bundles differ from the template; run `python scripts/make_bundles.py`:\n" + "\n".join(
        problems
    )


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
