"""Synthetic perfusion key images for training the cine network the perfusion ensemble uses
(perfusion_synth.key_image_sample, training.KeyImagePool, `cardiacaiseg train --perfusion-key-share`)."""
import numpy as np
import pytest

from CardiacAISegLib.labels import LV, MYO, RV
from CardiacAISegLib.models.perfusion_synth import key_image_sample


def _anatomy(size=120, pixel_mm=1.5):
    """A short-axis slice as ACDC gives it (cine image 0..1, internal labels): bright LV pool,
    darker wall, an RV crescent, grey tissue around."""
    yy, xx = np.mgrid[:size, :size]
    r_lv = np.hypot(yy - 60, xx - 66)
    lab = np.zeros((size, size), np.uint8)
    lab[(np.hypot(yy - 60, xx - 44) < 17) & (r_lv >= 17)] = RV
    lab[r_lv < 17] = MYO
    lab[r_lv < 11] = LV
    img = np.full((size, size), 0.3, np.float32)
    img[lab == LV] = 0.9
    img[lab == RV] = 0.85
    img[lab == MYO] = 0.25
    return img, lab, (pixel_mm, pixel_mm)


@pytest.mark.parametrize("seed", range(6))
def test_key_image_is_the_bolus_at_the_lv_peak_on_the_network_grid(seed):
    img, lab, sp = _anatomy()
    key, labels = key_image_sample(img, lab, sp, np.random.default_rng(seed), out_pixel_mm=1.25, fov_mm=150.0)
    assert key.shape == labels.shape
    assert abs(key.shape[0] - 120) <= 4 and abs(key.shape[1] - 120) <= 4, "150 mm at 1.25 mm pixels"
    assert key.dtype == np.float32 and 0.0 <= key.min() and key.max() <= 1.0
    assert {LV, MYO} <= set(np.unique(labels))
    # sizes in millimetres survive the acquisition grid and the resampling: the LV disc is
    # 22 mm across in the anatomy, so about 244 pixels of 1.25 mm
    assert 0.75 < (labels == LV).sum() * 1.25 ** 2 / (np.pi * 11 ** 2 * 1.5 ** 2) < 1.3
    # the labels lie on the image: at the LV peak the pool is far brighter than its wall
    lv, myo = key[labels == LV].mean(), key[labels == MYO].mean()
    assert lv > 1.5 * myo, (lv, myo)


def test_key_image_refuses_a_slice_whose_lv_leaves_the_field():
    img, lab, sp = _anatomy()
    lab = np.where(lab == LV, MYO, lab).astype(np.uint8)   # no LV pool drawn at all
    with pytest.raises(ValueError, match="no LV"):
        key_image_sample(img, lab, sp, np.random.default_rng(0))


def test_cli_mixes_key_images_into_cine_batches(tmp_path, capsys):
    import torch

    from test_partial_labels import _write_phantom_patient, run_tiny_finetune

    data = tmp_path / "site"
    _write_phantom_patient(data / "patient901", "full", seed=1)
    out = tmp_path / "key"
    assert run_tiny_finetune(data, out, "--perfusion-key-share", "0.5") in (0, None)
    assert "50% of each batch: synthetic perfusion key images" in capsys.readouterr().out
    saved = torch.load(out / "last.pt", weights_only=False)["config"]
    assert saved["perfusion_key_share"] == 0.5, "the checkpoint records the mix, for the model card"


@pytest.mark.parametrize("share", ["1", "-0.2"])
def test_cli_refuses_a_share_that_leaves_no_cine_slices(tmp_path, capsys, share):
    from CardiacAISegLib import cli

    rc = cli.main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--perfusion-key-share", share])
    err = capsys.readouterr().err
    assert rc == 2 and "--perfusion-key-share" in err and share in err
    assert not (tmp_path / "o").exists(), "nothing written for a refused run"
