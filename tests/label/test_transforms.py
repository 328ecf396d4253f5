"""Label map conversions and the return to the input's grid (main environment; no monailabel needed)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from kvmonai.data import LoadVolumed
from kvmonai.label.transforms import ChannelsToLabelMapd, LabelMapToChannelsd, RestoreInputGridd


def test_channels_to_label_map_values_and_overlap():
    pred = torch.zeros(3, 2, 3, 1)
    pred[0, 0, 0] = 1  # large bowel only
    pred[1, 0, 1] = 1  # small bowel only
    pred[2, 0, 2] = 1  # stomach only
    pred[0, 1, 0] = pred[1, 1, 0] = 1  # large + small bowel -> small bowel (later channel wins)
    pred[:, 1, 1] = 1  # all three -> stomach
    pred = MetaTensor(pred, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    out = ChannelsToLabelMapd("pred")({"pred": pred})["pred"]
    assert out.shape == (1, 2, 3, 1) and out.dtype == torch.uint8
    assert out[0, ..., 0].tolist() == [[1, 2, 3], [2, 3, 0]]
    assert torch.equal(out.affine, pred.affine)


def test_channels_to_label_map_rejects_no_channels():
    with pytest.raises(ValueError, match="channel-first"):
        ChannelsToLabelMapd("pred")({"pred": torch.zeros(300, 2, 2)})


def test_label_map_to_channels_roundtrip_and_custom_values():
    label = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8)[..., None]  # (1, 2, 2, 1)
    out = LabelMapToChannelsd("label")({"label": label})["label"]
    assert out.shape == (3, 2, 2, 1) and out.dtype == torch.float32
    assert out[:, 0, 1, 0].tolist() == [1, 0, 0] and out[:, 1, 1, 0].tolist() == [0, 0, 1]
    back = ChannelsToLabelMapd("label")({"label": out})["label"]
    assert torch.equal(back, label)
    # a study saved with the organs in another order, and one with no stomach segment
    d = LabelMapToChannelsd("label", values_key="v")({"label": label, "v": [3, 1, -1]})
    assert d["label"][:, 1, 1, 0].tolist() == [1, 0, 0] and d["label"][2].sum() == 0


def test_label_map_to_channels_errors():
    with pytest.raises(ValueError, match="num_classes"):
        LabelMapToChannelsd("label", num_classes=0)
    with pytest.raises(ValueError, match="single-channel"):
        LabelMapToChannelsd("label")({"label": torch.zeros(3, 2, 2, 1)})
    with pytest.raises(ValueError, match="one per class"):
        LabelMapToChannelsd("label", values_key="v")({"label": torch.zeros(1, 2, 2, 1), "v": [1, 2]})


@pytest.mark.parametrize("affine", [np.diag([1.5, 1.2, 3.0, 1.0]), np.diag([-1.5, 1.2, -3.0, 1.0])])
def test_restore_input_grid_undoes_the_pls_reorientation(tmp_path, affine):
    """A volume in RAS (or LAI) is loaded as PLS (axes swapped); the prediction comes back on the file's grid."""
    arr = np.random.default_rng(0).random((7, 5, 4)).astype(np.float32)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), path)
    image = LoadVolumed("image")({"image": str(path)})["image"]
    assert image.shape == (1, 5, 7, 4)  # PLS: rows posterior, columns left
    pred = MetaTensor(image.as_tensor().clone(), meta=dict(image.meta))  # a "prediction" = the voxel values
    out = RestoreInputGridd("pred")({"pred": pred, "image": image})["pred"]
    assert out.shape == (1, 7, 5, 4)
    np.testing.assert_allclose(out[0].numpy(), arr, rtol=1e-6)
    np.testing.assert_allclose(out.affine.numpy(), affine)


def test_restore_input_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="original_affine"):
        RestoreInputGridd("pred")({"pred": MetaTensor(torch.zeros(1, 2, 2, 2)), "image": torch.zeros(1, 2, 2, 2)})
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 3), np.float32), np.eye(4)), path)
    image = LoadVolumed("image")({"image": str(path)})["image"]
    small = MetaTensor(torch.zeros(1, 4, 4, 3), meta=dict(image.meta))  # not resized back
    with pytest.raises(ValueError, match="input's grid"):
        RestoreInputGridd("pred")({"pred": small, "image": image})
