"""`cardiacaiseg train` on data and flags a researcher gets wrong (probe 66): every refusal names
the file or flag, exits 2 and leaves --out as it was; a resumed run stays the run it was."""
import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CardiacAISegLib import cli  # noqa: E402
from CardiacAISegLib.models.partial_labels import LV_MYO, write_acdc_patient  # noqa: E402

TINY = ["--epochs", "1", "--batch", "2", "--slices-per-epoch", "4", "--crop", "64", "--patch", "64", "--threads", "1",
        "--quiet", "--params", '{"filters": [4, 8, 16, 32, 64]}']


def _patient(folder, seed=0, group="NOR", label_set="full"):
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    st, truth = make_cine_phantom(seed=seed, n_frames=6, n_slices=3, size=64, pixel_mm=2.0, slice_mm=8)
    frames = (truth["ed_frame"], truth["es_frame"])
    return write_acdc_patient(folder, {n + 1: st.images[t] for n, t in enumerate(frames)},
                              {n + 1: st.labels[t] for n, t in enumerate(frames)}, st.spacing, 1, 2, group, label_set)


@pytest.fixture
def site(tmp_path):
    """Four phantom patients in two groups: --val-per-group 1 trains on two, validates two."""
    data = tmp_path / "site"
    for n, group in enumerate(("NOR", "NOR", "DCM", "DCM")):
        _patient(data / f"patient90{n}", seed=n, group=group)
    return data


def _train(data, out, *options):
    try:
        return cli.main(["train", str(data), "--out", str(out), "--val-per-group", "1", *TINY, *options]) or 0
    except SystemExit as e:
        return e.code


def _recode(gt_path, mapping):
    img = nib.load(str(gt_path))
    data = np.asarray(img.dataobj).astype(np.int16)
    out = data.copy()
    for old, new in mapping.items():
        out[data == old] = new
    nib.save(nib.Nifti1Image(out, img.affine, img.header), str(gt_path))


@pytest.mark.parametrize("mapping, said", [({3: 4}, "label values [4]"), ({1: 255, 2: 255, 3: 255}, "label values [255]")])
def test_label_values_acdc_does_not_use_are_refused_before_anything_is_written(site, tmp_path, capsys, mapping, said):
    """An LV coded 4, or 0/255 masks, were set to background and trained on, with Dice 1.0 on the
    emptied maps, exit 0."""
    for gt in site.glob("patient90*/*_gt.nii.gz"):
        _recode(gt, mapping)
    out = tmp_path / "run"
    assert _train(site, out) == 2
    err = capsys.readouterr().err
    assert said in err and "_gt.nii.gz" in err and "patient90" in err
    assert not out.exists() or not any(out.iterdir()), "a refused run leaves no split.json to block its rerun"


def test_patients_without_usable_labels_are_named(site, tmp_path, capsys):
    """A training patient without maps was skipped unsaid; a validation patient without its ES
    map ended the run with KeyError after the first epoch."""
    from CardiacAISegLib.models.training_data import split_patients

    train_f, val_f = split_patients(sorted(site.iterdir()), 1, 0)
    es_map = val_f[0] / f"{val_f[0].name}_frame02_gt.nii.gz"
    kept = es_map.read_bytes()
    es_map.unlink()
    assert _train(site, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert val_f[0].name in err and "validation patient" in err and "ES" in err
    es_map.write_bytes(kept)
    for gt in train_f[0].glob("*_gt.nii.gz"):
        gt.unlink()
    assert _train(site, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert train_f[0].name in err and "training patient without a usable label map" in err


def test_lv_myo_maps_that_code_the_lv_as_1_are_refused(tmp_path, capsys):
    """Maps drawn 1 = LV, 2 = myocardium under --partial-labels lv_myo: the LV (1 is the RV in
    ACDC's values) was dropped as 'background or RV', exit 0."""
    data = tmp_path / "site"
    for n, group in enumerate(("NOR", "NOR", "DCM", "DCM")):
        _patient(data / f"patient90{n}", seed=n, group=group, label_set=LV_MYO)
    for gt in data.glob("patient90*/*_gt.nii.gz"):
        _recode(gt, {3: 1})
    assert _train(data, tmp_path / "run", "--partial-labels", "lv_myo") == 2
    err = capsys.readouterr().err
    assert "value 1" in err and "recode it to 3" in err


def test_force_keeps_the_earlier_run_when_the_new_one_is_refused(site, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(site, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _train(site, out, "--force", "--params", "{bad") == 2
    assert _train(tmp_path / "no-such-data", out, "--force") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert "--params" in capsys.readouterr().err


def test_resume_refuses_other_settings_and_replans_a_longer_decay(site, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(site, out, "--lr", "1e-3") == 0
    assert _train(site, out, "--lr", "1e-3", "--resume", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "--seed 0 (now 1)" in err
    assert len(err) < 600, "a short message, not torch's list of every weight"
    assert _train(site, out, "--lr", "1e-3", "--resume", "--force") == 2
    # the RV's loss weight defines the run too (resumed with another, the loss changed unsaid);
    # a checkpoint saved before the option trained with 1
    assert _train(site, out, "--lr", "1e-3", "--resume", "--rv-weight", "2") == 2
    assert "--rv-weight 1.0 (now 2.0)" in capsys.readouterr().err
    ck = torch.load(out / "last.pt", weights_only=False)
    del ck["config"]["rv_weight"]
    torch.save(ck, out / "last.pt")
    assert _train(site, out, "--lr", "1e-3", "--resume", "--rv-weight", "2") == 2
    assert "--rv-weight 1.0 (now 2.0)" in capsys.readouterr().err
    # a longer run: the decay is stretched, so the rate ends at 2 % of --lr, not back up the cosine
    assert _train(site, out, "--lr", "1e-3", "--resume", "--epochs", "3") == 0
    ck = torch.load(out / "last.pt", weights_only=False)
    assert [h["epoch"] for h in ck["history"]] == [1, 2, 3]
    assert ck["scheduler"]["T_max"] == 3
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-5, rel=1e-3)
    assert "re-planned over 3 epochs" in capsys.readouterr().out


def test_resume_from_another_working_directory_with_a_relative_data_path(site, tmp_path, monkeypatch):
    """The docs resume runs across sessions with relative paths (../shared/data/acdc): the saved
    data path, resolved against another working directory, refused the run (review)."""
    monkeypatch.chdir(site.parent)
    assert _train("site", tmp_path / "run", "--val-heart-crop-mm", "0") == 0
    monkeypatch.chdir(tmp_path)
    # --val-heart-crop-mm only chooses the best checkpoint: it may change on a resume
    assert _train(site, tmp_path / "run", "--resume", "--epochs", "2", "--val-heart-crop-mm", "160") == 0


def test_start_weights_that_cannot_be_used_are_named(site, tmp_path, capsys):
    wide = tmp_path / "wide"
    assert _train(site, wide) == 0
    assert _train(site, tmp_path / "a", "--finetune", str(wide / "best.pt"), "--params", '{"filters": [8, 16, 32, 64, 128]}') == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "do not fit" in err and len(err) < 600
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert _train(site, tmp_path / "b", "--finetune", str(text)) == 2
    assert "notes.pt: not a PyTorch checkpoint" in capsys.readouterr().err
    assert _train(site, tmp_path / "c", "--finetune", str(wide / "bset.pt")) == 2
    assert "bset.pt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch", "0"), ("--pixel-mm", "0"), ("--crop", "0"),
                                         ("--lr", "-1e-3"), ("--val-heart-crop-mm", "-160"), ("--slices-per-epoch", "-8"),
                                         ("--oriented-share", "1.5"), ("--rv-weight", "0"), ("--rv-weight", "nan")])
def test_numbers_train_cannot_use_are_refused(site, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert _train(site, out, f"{flag}={value}") == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_too_few_patients_for_the_validation_share_is_said(site, tmp_path, capsys):
    try:
        code = cli.main(["train", str(site), "--out", str(tmp_path / "run"), *TINY]) or 0   # 3 per group of 2
    except SystemExit as e:
        code = e.code
    assert code == 2 and "--val-per-group" in capsys.readouterr().err


def test_dice_of_two_empty_masks_scores_nothing():
    from CardiacAISegLib.models.training import dice

    assert np.isnan(dice(np.zeros(4), np.zeros(4)))
    assert dice([1, 0], [1, 0]) == 1.0


def _off_columns_deg(labels):
    """How far the LV -> RV axis of a map (engine coding) lies from the columns, either way along them."""
    from CardiacAISegLib.models.training_data import _heart_axis_angle

    a = _heart_axis_angle(labels)
    return float(np.degrees(min(abs(np.angle(np.exp(1j * (a - np.pi)))), abs(np.angle(np.exp(1j * a))))))


def test_oriented_share_turns_hearts_as_the_oriented_readings_see_them():
    """--oriented-share draws samples as the shipped "oriented4" readings present the heart (the
    RV within 55 degrees of the columns, either side); the rest, and maps without an RV, at any angle."""
    from CardiacAISegLib.labels import LV, MYO, RV
    from CardiacAISegLib.models.training_data import ORIENTED_SPREAD_DEG, augment_batch

    rng = np.random.default_rng(3)
    n, size = 48, 96
    rr, cc = np.mgrid[:size, :size]
    y = np.zeros((n, size, size), np.int64)
    for i, a in enumerate(rng.uniform(-np.pi, np.pi, n)):   # an LV disc in a wall, an RV disc at any angle from it
        y[i][(rr - 48) ** 2 + (cc - 48) ** 2 < 14 ** 2] = MYO
        y[i][(rr - 48) ** 2 + (cc - 48) ** 2 < 10 ** 2] = LV
        y[i][(rr - 48 - 26 * np.sin(a)) ** 2 + (cc - 48 - 26 * np.cos(a)) ** 2 < 8 ** 2] = RV
    x = torch.from_numpy((y > 0)[:, None].astype(np.float32))
    _, oriented = augment_batch(x, torch.from_numpy(y), np.random.default_rng(1), 80, "basic", oriented_share=1.0)
    off = [_off_columns_deg(m.numpy()) for m in oriented]
    assert max(off) <= ORIENTED_SPREAD_DEG + 3   # nearest-neighbour labels move the centroids a little
    rv_left = [np.nonzero(m.numpy() == RV)[1].mean() < np.nonzero(m.numpy() == LV)[1].mean() for m in oriented]
    assert 0.2 < np.mean(rv_left) < 0.8   # both ways along the columns, as the mirrored readings are
    _, anyway = augment_batch(x, torch.from_numpy(y), np.random.default_rng(1), 80, "basic", oriented_share=0.0)
    assert np.mean([_off_columns_deg(m.numpy()) > 60 for m in anyway]) > 0.2
    # LV/MYO-only maps have no axis: any angle (the RV kept in the image, dropped from the map)
    _, no_rv = augment_batch(x, torch.from_numpy(np.where(y == RV, 0, y)), np.random.default_rng(1), 80, "basic",
                             oriented_share=1.0)
    # the same draws on an image of the RV alone (the map holds none) show where it went
    rv_of = np.where(y == RV, 1.0, 0.0)[:, None].astype(np.float32)   # where the RV went, read from the image
    moved, _ = augment_batch(torch.from_numpy(rv_of), torch.from_numpy(np.where(y == RV, 0, y)), np.random.default_rng(1),
                             80, "basic", oriented_share=1.0)
    lv_c = [np.argwhere(m.numpy() == LV).mean(0) for m in no_rv]
    rv_c = [np.argwhere(img[0].numpy() > 0.5).mean(0) for img in moved]
    angles = np.degrees([np.arctan2(r[0] - l[0], r[1] - l[1]) for l, r in zip(lv_c, rv_c)])
    off_no_rv = np.minimum(np.abs((angles - 180 + 180) % 360 - 180), np.abs((angles + 180) % 360 - 180))
    assert np.mean(off_no_rv > 60) > 0.2   # not turned to the columns


def test_models_a_run_cannot_start_from_or_learn_from_are_refused_before_out_is_touched(site, tmp_path, capsys,
                                                                                        monkeypatch):
    """Probe 95: --finetune of an imported TorchScript model ended in KeyError 'architecture';
    --distill-from a perfusion model failed at the first batch (48 input channels), after --force
    had removed the earlier run's best.pt and last.pt; perfusion training with --val-per-group 0
    ended in "high <= 0" and left split.json behind."""
    from test_models import write_user_model

    from CardiacAISegLib.models import registry

    monkeypatch.setenv("CARDIACAISEG_MODELS", str(tmp_path / "user-models"))
    monkeypatch.setattr(registry, "_CACHE", type(registry._CACHE)())   # the user model is not listed after this test
    weights, card = write_user_model(tmp_path, "user-scripted")
    registry.import_model(weights, card)
    out = tmp_path / "run"
    assert _train(site, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _train(site, out, "--force", "--finetune", "user-scripted") == 2
    assert "user-scripted is an imported torchscript model" in capsys.readouterr().err
    assert _train(site, out, "--force", "--distill-from", "perfusion-resunet") == 2
    assert "perfusion-resunet is a perfusion model; a unet-light run learns from a cine model" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    perfusion = tmp_path / "perfusion-run"
    try:
        code = cli.main(["train", str(site), "--out", str(perfusion), "--architecture", "perfusion-resunet", "--epochs", "1",
                         "--batch", "2", "--val-per-group", "0", "--threads", "1", "--quiet"]) or 0
    except SystemExit as e:
        code = e.code
    assert code == 2 and "--val-per-group: 0: perfusion training keeps the epoch" in capsys.readouterr().err
    assert not perfusion.exists()
