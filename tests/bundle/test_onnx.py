"""``python -m monai.bundle onnx_export`` (MONAI's own exporter) works for every bundle, and ONNX Runtime agrees."""

from __future__ import annotations

import pytest
import torch

from kvmonai.networks import create, pairs

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 64


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "attention"), [*pairs(references=True), ("swin", "kv")])  # one timm bundle (CI)
def test_onnx_export_of_every_bundle(arch, attention, copy_bundle, tmp_path):
    from monai.bundle import onnx_export

    root = copy_bundle(f"{arch}_{attention}", tmp_path)
    torch.manual_seed(0)
    net = create(arch, attention, "tiny", img_size=SIZE).eval()
    (root / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    onnx_export(
        net_id="network_def",
        filepath=str(root / "models" / "model.onnx"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        input_shape=[1, 3, SIZE, SIZE],
        bundle_root=str(root),
        preset="tiny",
        img_size=SIZE,
    )
    x = torch.randn(1, 3, SIZE, SIZE)
    session = onnxruntime.InferenceSession(str(root / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4)
