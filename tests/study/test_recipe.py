"""The study's recipe is data (configs/study.json): the CLI's defaults, the bundles' overlay, label and retrofit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai.bundle import ConfigParser

from kvmonai.bundle import study_recipe
from kvmonai.cli import study as study_cli
from kvmonai.networks import PRESET_IMG_SIZE

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "kvmonai" / "bundle" / "template" / "configs" / "study.json"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_cli_defaults_are_the_recipe_file():
    recipe = {k: v for k, v in json.loads(TEMPLATE.read_text()).items() if not k.startswith("_")}
    assert study_recipe() == recipe
    assert study_cli._recipe(_args()) == recipe
    # another preset trains at its own size unless --img-size says otherwise; given options win
    assert study_cli._recipe(_args("--preset", "paper"))["img_size"] == PRESET_IMG_SIZE["paper"]
    assert study_cli._recipe(_args("--preset", "paper", "--img-size", "96"))["img_size"] == 96
    assert study_cli._recipe(_args("--epochs", "3", "--val-interval", "1"))["max_epochs"] == 3
    assert f"(default: {recipe['max_epochs']})" in _help()


def _help() -> str:
    parser = argparse.ArgumentParser()
    study_cli.add_arguments(parser)
    return parser.format_help()


def test_every_bundle_merges_the_overlay_after_train_json():
    recipe = study_recipe()
    for bundle in sorted((REPO / "bundles").glob("*/configs/train.json")):
        root = bundle.parents[1]
        assert study_recipe(root) == recipe, root.name
        parser = ConfigParser()
        parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "study.json")])
        for key, value in recipe.items():
            assert parser[key] == value, (root.name, key)
