"""``kvmonai retrofit`` and the bundles' ``pretrained`` setting: a QKV model starts a KV bundle, which fine-tunes."""

from __future__ import annotations

import json

import torch
from monai.bundle import ConfigParser

from kvmonai.cli import main
from kvmonai.retrofit import train_bundle


def test_retrofit_fine_tunes_a_kv_bundle_from_a_qkv_model(prepared, tiny, copy_bundle, tmp_path, capsys):
    """QKV SETR trained 1 epoch -> KV SETR: K, V, output and decoder weights kept, Q dropped, then 1 epoch."""
    settings = {**tiny, "datalist": str(prepared), "mlflow": False, "progress": False}
    qkv_bundle = copy_bundle("setr_qkv", tmp_path)
    kv_bundle = copy_bundle("setr_kv", tmp_path)
    train_bundle(qkv_bundle, tmp_path / "qkv", **settings)
    qkv = torch.load(tmp_path / "qkv" / "model.pt", weights_only=True)

    out = tmp_path / "retrofit"
    args = ["retrofit", "--weights", str(tmp_path / "qkv" / "model.pt"), "--bundle", str(kv_bundle)]
    args += ["--epochs", "1", "--out", str(out), "--device", "cpu"]
    args += [f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dropped (Q)" in printed and "best validation Jaccard" in printed

    init = torch.load(out / "kv_init.pt", weights_only=True)
    dim = qkv["blocks.0.attn.qkv.weight"].shape[1]
    for i in range(2):
        assert torch.equal(init[f"blocks.{i}.attn.kv.weight"], qkv[f"blocks.{i}.attn.qkv.weight"][dim:])
        assert torch.equal(init[f"blocks.{i}.attn.out_proj.weight"], qkv[f"blocks.{i}.attn.out_proj.weight"])
    assert not any(".qkv." in k for k in init)
    shared = [k for k in qkv if ".attn.qkv." not in k]
    assert all(torch.equal(init[k], qkv[k]) for k in shared)  # every other weight, the decoder's too
    # the fine-tuning run loaded those weights (its report) and trained its epoch from them
    assert "kvmonai" in (out / "pretrained_report.txt").read_text()
    assert json.loads((out / "run_settings.json").read_text())["pretrained"] == str(out / "kv_init.pt")
    assert (out / "metrics.csv").read_text().splitlines()[1].startswith("1,")
    tuned = torch.load(out / "model.pt", weights_only=True)
    assert not torch.equal(tuned["blocks.0.attn.kv.weight"], init["blocks.0.attn.kv.weight"])

    # weights of another architecture are refused with the reason, before any training
    args[2] = str(out / "model.pt")  # a KV model is not a QKV one
    assert main(args) == 2
    assert "is not a QKV setr model" in capsys.readouterr().err


def test_pretrained_is_skipped_when_resuming(copy_bundle, tmp_path):
    """The bundle loads ``pretrained`` on a fresh run only: a resumed run keeps its checkpoint's weights."""
    root = copy_bundle("unetr_kv", tmp_path)

    def loads(**overrides) -> bool:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "train.json"))
        parser.update(overrides)
        i = next(i for i, h in enumerate(parser["train"]["handlers"]) if h["_target_"].endswith("PretrainedLoader"))
        return not parser.get_parsed_content(f"train#handlers#{i}#_disabled_")

    assert not loads()  # default: no pretrained weights
    assert loads(pretrained="/weights.npz")
    assert not loads(pretrained="/weights.npz", resume=True)
    assert not loads(pretrained="/weights.npz", resume="true")  # as the command line passes it
