"""One home for where bundles are and what bundles and runs are called (kvmonai.paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmonai import paths

REPO = Path(__file__).resolve().parents[1]


def test_bundles_dir_honours_the_variable_and_says_what_to_do_without_a_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("KVMONAI_BUNDLES", raising=False)
    assert paths.bundles_dir() == REPO / "bundles"
    monkeypatch.setenv("KVMONAI_BUNDLES", str(tmp_path))
    assert paths.bundles_dir() == tmp_path
    monkeypatch.delenv("KVMONAI_BUNDLES")
    monkeypatch.setattr(paths, "_CHECKOUT_BUNDLES", tmp_path / "site-packages" / "bundles")  # an installed package
    with pytest.raises(FileNotFoundError, match="without a checkout .* Set KVMONAI_BUNDLES to a folder"):
        paths.bundles_dir()


def test_names():
    assert paths.bundle_name("setr", "kv") == "setr_kv"
    assert paths.run_name("setr", "kv", 0, 1) == "setr_kv_fold0_seed1"


def test_find_bundle_by_folder_or_name(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMONAI_BUNDLES", str(tmp_path / "bundles"))
    (tmp_path / "bundles" / "setr_kv" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "setr_kv" / "configs" / "train.json").write_text("{}")
    assert paths.find_bundle("setr_kv", "train.json") == tmp_path / "bundles" / "setr_kv"
    assert paths.find_bundle(tmp_path / "bundles" / "setr_kv", "train.json") == tmp_path / "bundles" / "setr_kv"
    with pytest.raises(FileNotFoundError, match=r"setr_kv is neither a bundle folder nor a bundle name in .*bundles"):
        paths.find_bundle("setr_kv")  # no inference.json
    monkeypatch.delenv("KVMONAI_BUNDLES")
    monkeypatch.setattr(paths, "_CHECKOUT_BUNDLES", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="unetr_kv is not a bundle folder .* Set KVMONAI_BUNDLES"):
        paths.find_bundle("unetr_kv")
