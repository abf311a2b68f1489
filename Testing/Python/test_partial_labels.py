"""Partial labels (LV/MYO-only maps): the marginal loss, label sets from Info.cfg, and a tiny
fine-tune through `cardiacaiseg train --partial-labels lv_myo` (models/partial_labels.py)."""
import numpy as np
import pytest
import torch

from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.models.partial_labels import (BACKGROUND, LV, LV_MYO, MYO, RV, label_set_of, partial_label_loss,
                                                   restrict_to_label_set, write_acdc_patient)
from CardiacAISegLib.models.training import soft_dice_ce_loss


def _heart(size=32):
    """LV disk, myocardial ring and an RV crescent beside it (internal labels)."""
    yy, xx = np.mgrid[:size, :size]
    r_lv = np.hypot(yy - 16, xx - 18)
    lab = np.zeros((size, size), np.int64)
    lab[np.hypot(yy - 16, xx - 8) < 7] = RV
    lab[r_lv < 8] = MYO
    lab[r_lv < 5] = LV
    return lab


def _batch(seed=0):
    """Two copies of one heart: case 0 full, case 1 LV/MYO-only (its RV drawn as background)."""
    full = _heart()
    target = torch.from_numpy(np.stack([full, restrict_to_label_set(full, LV_MYO)]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, *full.shape, generator=g).requires_grad_(True)
    return logits, target, torch.tensor([True, False]), torch.from_numpy(full == RV)


def test_equals_the_full_loss_when_every_map_is_full():
    logits, target, _, _ = _batch()
    full = torch.stack([target[0], target[0]])
    a = partial_label_loss(logits, full, torch.tensor([True, True]))
    b = soft_dice_ce_loss(logits, full, 4)
    assert torch.allclose(a, b, atol=1e-6)


def test_lv_myo_case_never_pushes_its_rv_towards_background():
    logits, target, has_rv, rv_pixels = _batch()
    partial_label_loss(logits, target, has_rv).backward()
    g_rv = logits.grad[:, RV]
    # descent moves a logit against its gradient: > 0 lowers the RV score, as it must where RV is drawn
    assert (g_rv[0][~rv_pixels] > 0).all(), "full case: background pixels must push RV down"
    assert (g_rv[1][rv_pixels] <= 1e-9).all(), "lv_myo case: undrawn RV pixels pushed towards background"
    # the naive loss on the same LV/MYO-only map does push the RV down there: what the marginal loss avoids
    naive = logits.detach().clone().requires_grad_(True)
    soft_dice_ce_loss(naive, target, 4).backward()
    assert (naive.grad[1, RV][rv_pixels] > 0).all()


def test_moving_probability_between_background_and_rv_costs_nothing_only_where_rv_is_undrawn():
    logits, target, has_rv, rv_pixels = _batch(seed=1)
    logits = logits.detach()
    base = partial_label_loss(logits, target, has_rv)
    for case in (1, 0):
        moved = logits.clone()
        s = torch.logsumexp(moved[case, [BACKGROUND, RV]], 0)          # log(e^z_bg + e^z_rv), kept
        moved[case, RV] = torch.where(rv_pixels, s + np.log(0.9), moved[case, RV])   # 90 % of it to the RV
        moved[case, BACKGROUND] = torch.where(rv_pixels, s + np.log(0.1), moved[case, BACKGROUND])
        after = partial_label_loss(moved, target, has_rv)
        if case == 1:
            assert torch.allclose(after, base, atol=1e-5), "lv_myo case: the loss must not see the bg/RV split"
        else:
            assert after < base - 1e-2, "full case: the drawn RV must reward RV probability"


def test_dice_of_a_class_no_case_draws_is_left_out():
    logits, target, _, _ = _batch()
    only_partial = partial_label_loss(logits[1:], target[1:], torch.tensor([False]))
    assert torch.isfinite(only_partial)
    only_partial.backward()
    assert logits.grad is not None


def run_tiny_finetune(data, out, *options):
    """`cardiacaiseg train --finetune unet-light` for one epoch of 8 small crops, with ``options``."""
    from CardiacAISegLib import cli

    return cli.main(["train", str(data), "--out", str(out), "--finetune", "unet-light", *options, "--epochs", "1",
                     "--batch", "4", "--slices-per-epoch", "8", "--crop", "96", "--patch", "64", "--threads", "1",
                     "--val-per-group", "0", "--quiet"])


def _write_phantom_patient(folder, label_set, seed=0):
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    st, truth = make_cine_phantom(seed=seed, n_frames=6, n_slices=4, size=96, pixel_mm=1.5, slice_mm=8)
    frames = (truth["ed_frame"], truth["es_frame"])
    return write_acdc_patient(folder, {n + 1: st.images[t] for n, t in enumerate(frames)},
                              {n + 1: st.labels[t] for n, t in enumerate(frames)}, st.spacing, 1, 2, "NOR", label_set)


def test_label_set_from_info_cfg_and_the_option(tmp_path):
    import nibabel as nib

    from CardiacAISegLib.readers.acdc import load_acdc_patient

    lv_myo = _write_phantom_patient(tmp_path / "patient901", LV_MYO)
    full = _write_phantom_patient(tmp_path / "patient902", "full")
    assert label_set_of(lv_myo) == LV_MYO and label_set_of(full) == "full"
    assert label_set_of(full, "lv_myo") == LV_MYO and label_set_of(lv_myo, "none") == "full"
    gt = np.asarray(nib.load(str(lv_myo / "patient901_frame01_gt.nii.gz")).dataobj)
    assert set(np.unique(gt)) == {0, 2, 3}, "an lv_myo map holds no RV (ACDC label 1)"
    st = load_acdc_patient(lv_myo)
    assert (st.labels[0] == LV).any() and not (st.labels[0] == RV).any()
    (full / "Info.cfg").write_text("ED: 1\nES: 2\nLabelSet: lv only\n")
    with pytest.raises(CardiacInputError) as e:
        label_set_of(full)
    assert "Info.cfg" in str(e.value) and "lv only" in str(e.value) and "lv_myo" in str(e.value)


def test_cli_finetunes_from_lv_myo_maps_and_writes_a_checkpoint(tmp_path, capsys):
    from CardiacAISegLib.models.architectures import build

    data = tmp_path / "site"
    _write_phantom_patient(data / "patient901", "full", seed=1)
    _write_phantom_patient(data / "patient902", "full", seed=2)
    out = tmp_path / "ft"
    assert run_tiny_finetune(data, out, "--partial-labels", "lv_myo") in (0, None)
    assert "with LV/MYO labels only" in capsys.readouterr().out
    state = torch.load(out / "best.pt", weights_only=True)
    from CardiacAISegLib.models.registry import get_card

    params = get_card("unet-light")["architecture"].get("params", {})
    build("unet-light", **params).load_state_dict(state)  # loads back into the architecture it fine-tuned
    saved = torch.load(out / "last.pt", weights_only=False)["config"]["arch_params"]
    assert saved == params, "the checkpoint records the architecture it fine-tuned, for shipping"
    assert (out / "last.pt").is_file()


def test_cli_refuses_an_unknown_partial_label_set(tmp_path, capsys):
    from CardiacAISegLib import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--partial-labels", "rv_only"])
    assert e.value.code == 2
    assert "--partial-labels" in capsys.readouterr().err


def test_new_domain_of_the_experiment_keeps_the_anatomy_and_changes_the_appearance(shared_data, tmp_path):
    """tools/finetune_new_domain.py: the written new-domain patient loads back with the same
    structures (volumes within 8 %: the majority vote at 1.6 x coarser pixels grows the LV pool
    ~2 % and thins the myocardium and RV by 2-6 %) and a different grey-level order
    (blood no longer the brightest tissue); its lv_myo copy holds no RV."""
    import importlib.util

    from CardiacAISegLib.readers.acdc import load_acdc_patient

    path = __import__("pathlib").Path(__file__).resolve().parents[2] / "tools" / "finetune_new_domain.py"
    spec = importlib.util.spec_from_file_location("finetune_new_domain", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    acdc = shared_data / "acdc"
    tool.write_domain(acdc, ["patient001"], tmp_path / "full", "full", 11)
    tool.write_domain(acdc, ["patient001"], tmp_path / "lv_myo", LV_MYO, 11)
    before, after = load_acdc_patient(acdc / "patient001"), load_acdc_patient(tmp_path / "full" / "patient001")
    assert after.spacing[0] == pytest.approx(before.spacing[0] * tool.DOMAIN["matrix_factor"], rel=0.02)
    for t in (before.ed_frame, before.es_frame):
        for c in (LV, MYO, RV):
            v0 = (before.labels[t] == c).sum() * before.voxel_volume_ml
            v1 = (after.labels[t] == c).sum() * after.voxel_volume_ml
            assert v1 == pytest.approx(v0, rel=0.08), (t, c)
    ed = before.ed_frame
    blood_over_myo = [float(np.median(st.images[ed][st.labels[ed] == LV]) / np.median(st.images[ed][st.labels[ed] == MYO]))
                      for st in (before, after)]
    assert blood_over_myo[0] > 1.5 and blood_over_myo[1] < 1.0, blood_over_myo
    partial = load_acdc_patient(tmp_path / "lv_myo" / "patient001")
    assert label_set_of(tmp_path / "lv_myo" / "patient001") == LV_MYO
    assert not (partial.labels[ed] == RV).any() and (partial.labels[ed] == LV).sum() == (after.labels[ed] == LV).sum()
