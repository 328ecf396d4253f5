"""OpenVINO behind an inference bundle: the same masks as torch, one conversion per fingerprint, int8 with a guard.

A tiny SETR-KV and a tiny SwinUNETR-KV bundle are fitted to a volume (so their masks have confident and borderline
pixels), then run with ``runtime: openvino`` in fp32 and in int8 after ``kvmonai quantize``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from kvmonai.bundle.workflow import bundle_workflow
from kvmonai.metrics import pooled_dice

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SIZE = 64


def _infer(root: Path, image: Path, out: Path, **options) -> tuple[np.ndarray, object]:
    wf = bundle_workflow(
        root, ["inference.json"], "infer", logging=False, bundle_root=str(root), preset="tiny", img_size=SIZE,
        input_path=str(image), output_dir=str(out), **{"inferer#progress": False}, **options,
    )  # fmt: skip
    wf.run()
    network = wf.evaluator.network
    wf.finalize()
    return np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj), network


def _volume(prepared: Path) -> tuple[Path, Path]:
    volume = next(v for v in json.loads(Path(prepared).read_text())["training"] if v["fold"] == 0)
    return Path(prepared).parent / volume["image"], Path(prepared).parent / volume["label"]


def _cpu_has_amx_int8() -> bool:
    """Whether the CPU has Intel AMX int8 tiles (``amx_int8`` in /proc/cpuinfo), whose int8 kernels OpenVINO uses."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["setr_kv", "swin_unetr_kv"])
def test_openvino_and_int8_agree_with_torch(name, prepared, copy_bundle, fit_bundle, tmp_path, caplog):
    from kvmonai.quantize import QuantizationRefusedError, quantize_bundle

    caplog.set_level(logging.INFO, logger="kvmonai.inference.runtime")
    root = copy_bundle(name, tmp_path)
    image, label = _volume(prepared)
    fit_bundle(root, name.rsplit("_", 1)[0], image, label, SIZE)
    truth = np.asarray(nib.load(label).dataobj)

    torch_mask, _ = _infer(root, image, tmp_path / "torch", precision="fp32", channels_last=False, fuse=False)
    ov_mask, first = _infer(root, image, tmp_path / "ov", runtime="openvino", precision="fp32")
    dice_torch, dice_ov = pooled_dice(torch_mask, truth), pooled_dice(ov_mask, truth)
    assert dice_torch > 0.25, f"the fitted network should segment much of its volume: {dice_torch}"
    assert abs(dice_ov - dice_torch) <= 0.005, (dice_torch, dice_ov)
    assert first.converted and len(list((root / "models" / "openvino").iterdir())) == 1

    caplog.clear()
    auto_mask, second = _infer(root, image, tmp_path / "ov2", runtime="openvino")  # bf16 where the CPU has it
    assert not second.converted and second.model_path == first.model_path  # a second run converts nothing
    assert "OpenVINO: inference precision" in caplog.text  # the log says bf16 or why fp32
    bf16 = "bf16: native" in caplog.text
    # bf16 rounds logits near the threshold: measured 0.017 (SETR) on the AVX512-BF16 Zen 5 of 2026-12-02
    assert abs(pooled_dice(auto_mask, truth) - dice_torch) <= (0.03 if bf16 else 0.005)

    try:
        report = quantize_bundle(root, prepared, subset=16, overrides={"preset": "tiny", "img_size": SIZE})
    except QuantizationRefusedError as refused:
        # the Dice guard at work: measured for SwinUNETR-KV on the AVX-512 VNNI Zen 5 of 2026-12-02 (int8 Dice 0.01
        # against fp32 0.46), not on the AVX2 Zen 3; it must leave nothing behind. SETR-KV never needed it there, but
        # on the Intel Xeon with AMX of 2026-12-05 its int8 lost 0.0138 of a 0.318 validation Dice with 0.01 % of
        # voxels differing (64 calibration slices: 0.0152), so the guard refused it: AMX's int8 kernels round
        # otherwise, and this tiny network's validation Dice rests on few voxels. Only there may SETR be refused.
        assert name != "setr_kv" or _cpu_has_amx_int8(), refused
        assert not (root / "models" / "model_int8.xml").exists()
        pytest.xfail(f"int8 refused by the Dice guard on this CPU: {refused}")
    record = json.loads((root / "models" / "model_int8.json").read_text())
    assert record["dice_drop"] == pytest.approx(report.dice_drop) and record["quantized_inputs"]
    int8_mask, _ = _infer(root, image, tmp_path / "int8", runtime="openvino", precision="int8")
    assert pooled_dice(int8_mask, truth) >= dice_torch - 0.01  # no loss beyond the guard (a gain was seen: +0.019)
    assert (int8_mask != ov_mask).mean() < 0.02

    with torch.no_grad():  # changed weights: converted again, and the int8 model is refused as stale
        state = torch.load(root / "models" / "model.pt", weights_only=True)
        next(iter(state.values())).add_(0.01)
        torch.save(state, root / "models" / "model.pt")
    _, third = _infer(root, image, tmp_path / "ov3", runtime="openvino")
    assert third.converted and len(list((root / "models" / "openvino").iterdir())) == 2
    with pytest.raises(Exception) as info:  # MONAI wraps it in "Failed to evaluate ConfigExpression"
        _infer(root, image, tmp_path / "int8b", runtime="openvino", precision="int8")
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("quantised from other weights" in message for message in chain), chain


@pytest.mark.slow
def test_quantize_refuses_a_drop_and_leaves_nothing(prepared, copy_bundle, fit_bundle, tmp_path, monkeypatch, capsys):
    import kvmonai.metrics
    from kvmonai.cli import main

    root = copy_bundle("setr_kv", tmp_path)
    image, label = _volume(prepared)
    fit_bundle(root, "setr", image, label, SIZE, steps=20)
    scores = iter([0.80, 0.70])  # fp32, then int8: a 0.10 drop
    monkeypatch.setattr(kvmonai.metrics, "pooled_dice", lambda *a: next(scores))
    before = sorted(p.name for p in (root / "models").iterdir())
    rc = main(["quantize", str(root), "--datalist", str(prepared), "--subset", "8", "--set", "preset=tiny",
               "--set", f"img_size={SIZE}"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "int8 lost 0.1000 pooled Dice" in err and "Nothing was written" in err
    after = sorted(p.name for p in (root / "models").iterdir() if p.name != "openvino")
    assert after == before  # no int8 files, no staging folder


def test_quantize_names_bad_input(tmp_path, capsys):
    from kvmonai.cli import main

    assert main(["quantize", str(tmp_path), "--datalist", str(tmp_path / "d.json")]) == 2
    assert "is not a bundle folder" in capsys.readouterr().err
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "setr_kv"
    assert main(["quantize", str(bundle), "--datalist", str(tmp_path / "d.json")]) == 2
    assert "--datalist" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--datalist", __file__, "--subset", "0"]) == 2
    assert "--subset must be >= 1" in capsys.readouterr().err
