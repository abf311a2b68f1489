"""Networks: registry and sha256, user TorchScript import, determinism, training, fine-tuning,
inference mapped back onto an oblique grid."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CardiacAISegLib.errors import CardiacInputError  # noqa: E402
from CardiacAISegLib.models import registry  # noqa: E402
from CardiacAISegLib.models.architectures import build, parameter_count  # noqa: E402
from CardiacAISegLib.study import Study  # noqa: E402


class IntensityClassifier(torch.nn.Module):
    """Class = nearest of the intensities (0, 1, 0.5, 0.25): a 'network' whose answer is known."""

    def forward(self, x):
        centres = torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)
        return -100.0 * (x - centres) ** 2


def oblique_study():
    """Non-square, anisotropic, oblique: a transposition or shift in the mapping shows up."""
    s, r, c = 3, 70, 90
    yy, xx = np.mgrid[:r, :c]
    img = np.zeros((s, r, c), np.float32)
    truth = np.zeros((s, r, c), np.uint8)
    d = np.hypot((yy - 30) * 1.7, (xx - 55) * 1.1)       # round in mm: spacing row 1.7, col 1.1
    for k in range(s):
        truth[k][d < 28] = 2
        truth[k][d < 18] = 1
        truth[k][(np.hypot((yy - 30) * 1.7, (xx - 20) * 1.1) < 12)] = 3
    img[truth == 1], img[truth == 2], img[truth == 3] = 1.0, 0.5, 0.25
    rot = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]])
    m = np.eye(4)
    m[:3, :3] = rot * np.array([1.1, 1.7, 8.0])
    m[:3, 3] = (12.0, -40.0, 7.5)
    return Study(images=img[None], ijk_to_ras=m, name="oblique"), truth


def write_user_model(tmp_path, name="user-threshold"):
    scripted = torch.jit.script(IntensityClassifier())
    weights = tmp_path / "model.ts"
    scripted.save(str(weights))
    card = {"name": name, "title": "Intensity threshold (test)", "task": "cine", "version": "1",
            "classes": ["background", "LV blood pool", "LV myocardium", "RV"],
            "input": {"pixel_mm": 1.25, "size_multiple": 1, "normalisation": "none"},
            "weights": {"file": weights.name, "format": "torchscript", "sha256": registry.sha256_of(weights)},
            "licence": "test"}
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(card))
    return weights, card_path


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("CARDIACAISEG_MODELS", str(folder))
    registry._CACHE.clear()
    return folder


def test_inference_maps_back_onto_an_oblique_grid():
    from CardiacAISegLib.models.inference import predict_labels

    study, truth = oblique_study()
    # normalise_volume maps the 99.5th percentile to 1, so the intensities stay as built
    pred = predict_labels(IntensityClassifier(), study.images[0], (study.spacing[1], study.spacing[0]), 1.25, 1)
    assert pred.shape == truth.shape
    for v in (1, 2, 3):
        a, b = pred == v, truth == v
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95, f"label {v} misplaced after resampling"


def test_user_torchscript_model_imports_and_runs(tmp_path, user_models):
    from CardiacAISegLib.pipeline import segment

    weights, card = write_user_model(tmp_path)
    installed = registry.import_model(weights, card)
    assert installed["name"] in [c["name"] for c in registry.list_models("cine")]
    study, truth = oblique_study()
    labels, info = segment(study, "user-threshold")
    assert info["sha256"] == registry.sha256_of(weights)
    assert (labels[0] == 1).sum() > 0.9 * (truth == 1).sum()
    with pytest.raises(CardiacInputError, match="already installed"):
        registry.import_model(weights, card)


def test_sha256_mismatch_is_refused(tmp_path, user_models):
    weights, card = write_user_model(tmp_path, "user-corrupt")
    registry.import_model(weights, card)
    installed = user_models / "user-corrupt" / "model.ts"
    installed.write_bytes(installed.read_bytes()[:-10] + b"0123456789")
    registry._CACHE.clear()
    with pytest.raises(CardiacInputError, match="sha256 mismatch"):
        registry.load_model("user-corrupt")


def test_import_rejects_a_card_that_does_not_match(tmp_path, user_models):
    weights, card = write_user_model(tmp_path, "user-bad")
    data = json.loads(card.read_text())
    data["weights"]["sha256"] = "0" * 64
    card.write_text(json.dumps(data))
    with pytest.raises(CardiacInputError, match="sha256"):
        registry.import_model(weights, card)
    assert not (user_models / "user-bad").exists()
    del data["task"]
    card.write_text(json.dumps(data))
    with pytest.raises(CardiacInputError, match="lacks task"):
        registry.import_model(weights, card)


def test_unknown_model_lists_the_installed_ones():
    with pytest.raises(CardiacInputError, match="no such model"):
        registry.get_card("no-such-net")


def test_shipped_models_verify():
    cards = registry.list_models()
    for card in cards:
        if card["_folder"].startswith(str(registry.SHIPPED_DIR)):
            registry.verify_weights(card)
            loaded = registry.load_model(card["name"], runtime="torch")
            assert parameter_count(loaded.module) == card["architecture"]["parameter_count"]


@pytest.mark.parametrize("arch", ["unet-light", "gammanet"])
def test_inference_is_deterministic(arch):
    torch.manual_seed(0)
    net = build(arch).eval()
    x = torch.rand(1, 1, 64, 48)
    with torch.inference_mode():
        assert torch.equal(net(x), net(x))


def test_gammanet_gives_every_timestep():
    net = build("gammanet", timesteps=3).eval()
    with torch.inference_mode():
        outs = net(torch.rand(1, 1, 32, 32), return_all=True)
    assert len(outs) == 3 and all(o.shape == (1, 4, 32, 32) for o in outs)
    assert not torch.equal(outs[0], outs[-1])


def test_perfusion_resunet_takes_frames_as_channels():
    net = build("perfusion-resunet", in_frames=48, widths=[16, 24], blocks=[1, 1], bridge_blocks=1).eval()
    with torch.inference_mode():
        assert net(torch.rand(2, 48, 40, 40)).shape == (2, 4, 40, 40)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, shared_data):
    from CardiacAISegLib.models.training import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(shared_data / "acdc"), out_dir=str(out), epochs=4, batch=8, slices_per_epoch=96,
                      crop=128, patch=96, lr=3e-3, train_patients=["patient001", "patient002"], val_patients=[],
                      threads=1)
    history = train(cfg, log=lambda *_: None)
    return cfg, out, history


def test_short_training_run_lowers_the_loss(short_run):
    _, out, history = short_run
    assert len(history) == 4
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_resume_continues_from_the_checkpoint(short_run):
    from dataclasses import replace

    from CardiacAISegLib.models.training import train

    cfg, out, history = short_run
    more = train(replace(cfg, epochs=5, resume=True), log=lambda *_: None)
    assert [h["epoch"] for h in more] == [1, 2, 3, 4, 5]


def test_finetune_freezes_the_encoder(short_run, tmp_path):
    from CardiacAISegLib.models.training import TrainConfig, train

    cfg, out, _ = short_run
    start = torch.load(out / "best.pt", weights_only=True)
    ft = TrainConfig(data=cfg.data, out_dir=str(tmp_path / "ft"), epochs=1, batch=8, slices_per_epoch=32, crop=128,
                     patch=96, lr=1e-3, train_patients=["patient003"], val_patients=[],
                     finetune_from=str(out / "best.pt"), freeze_epochs=1, threads=1)
    train(ft, log=lambda *_: None)
    after = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    enc = [k for k in start if k.startswith("down.") and k.endswith("weight")]
    dec = [k for k in start if k.startswith(("up.", "head.")) and k.endswith("weight")]
    assert enc and all(torch.equal(start[k], after[k]) for k in enc), "encoder changed while frozen"
    assert any(not torch.equal(start[k], after[k]) for k in dec), "decoder did not train"


def test_strong_augmentation_changes_appearance_but_keeps_tissue_order():
    """Other vendors look different, but bright blood stays brighter than myocardium, which stays
    brighter than lung: the appearance shift may reshape grey levels, never reorder tissues."""
    from CardiacAISegLib.models.training_data import appearance_shift

    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    img = np.full((96, 96), 0.05, np.float32)
    img[r < 30] = 0.35
    img[r < 18] = 0.9
    x = torch.from_numpy(np.repeat(img[None, None], 40, 0))
    out = appearance_shift(x, np.random.default_rng(3)).numpy()[:, 0]
    assert out.shape == (40, 96, 96) and np.isfinite(out).all()
    blood, myo, lung = (out[:, m].mean(1) for m in (r < 14, (r > 21) & (r < 27), r > 36))
    assert (blood > myo).all() and (myo > lung).all()
    changed = np.abs(out - img[None]).mean((1, 2)) > 0.01
    assert changed.mean() > 0.8, "strong augmentation left most images unchanged"


def test_synthetic_perfusion_body_does_not_copy_cine_fat_brightness():
    """Fat is bright in cine and takes up little Gd: bright cine tissue must enhance less."""
    from CardiacAISegLib.models.perfusion_synth import _body_enhancement
    from CardiacAISegLib.phantoms.phantom_perfusion import perfusion_aif

    t = np.arange(48) * 0.5
    aif = perfusion_aif(t, 1.5, 5.0, 3.0)
    img = np.full((64, 64), 0.3, np.float32)
    img[:, 32:] = 0.9                     # right half: cine-bright (fat)
    lab = np.zeros((64, 64), np.uint8)
    body = np.ones((64, 64), bool)
    ratios = []
    for seed in range(10):
        conc = _body_enhancement(t, aif, 0.5, 2.5, img, lab, body, np.random.default_rng(seed))
        ratios.append(conc[:, :, 34:].sum() / conc[:, :, :30].sum())
    assert np.median(ratios) < 0.7


def test_synthetic_vessels_enhance_like_blood_outside_the_heart_and_stay_background():
    """Great vessels (aorta, pulmonary artery) painted into a synthetic series: blood curves (the
    AIF's or the RV's, a little later), 4 mm or more outside the heart; the labels keep them
    background."""
    from scipy import ndimage

    from CardiacAISegLib.labels import LV, MYO, RV
    from CardiacAISegLib.models.perfusion_synth import _paint_vessels, synth_sample
    from CardiacAISegLib.phantoms.phantom_perfusion import perfusion_aif

    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    lab = np.zeros((96, 96), np.uint8)
    lab[r < 14] = MYO
    lab[r < 9] = LV
    lab[(np.hypot(yy - 48, xx - 30) < 9) & (lab == 0)] = RV
    t = np.arange(48) * 0.5
    aif, rv = perfusion_aif(t, 3.0, 5.0, 3.0), perfusion_aif(t, 1.0, 6.0, 3.0)
    pixel_mm = 2.0
    keep_out = ndimage.binary_dilation(lab > 0, iterations=2)   # 4 mm
    for seed in range(8):
        conc = np.zeros((48, 96, 96), np.float32)
        img = np.where(lab == LV, 0.9, 0.3).astype(np.float32)
        _paint_vessels(conc, img, lab, t, aif, rv, pixel_mm, np.random.default_rng(seed))
        vessel = conc.max(0) > 0
        assert vessel.sum() >= 20, "at least one vessel of 16 mm or more"
        assert not (vessel & keep_out).any(), "a vessel was painted over or against the heart"
        curves = conc[:, vessel]
        assert curves.max(0).min() > 0.8 * min(aif.max(), rv.max()), "a vessel is as bright as blood"
        # each vessel peaks with its source or up to 1.5 s after it, never before the RV
        assert np.argmax(curves, 0).min() >= np.argmax(rv)
        assert np.allclose(img[vessel], 0.9), "pre-contrast signal of blood"
    series, lab_out, _ = synth_sample(img, lab, (2.0, 2.0), np.random.default_rng(0), size=96, vessels=1.0)
    assert set(np.unique(lab_out)) <= {0, LV, MYO, RV} and (lab_out == LV).sum() > 0


def test_papillary_islands_inside_the_blood_pool_count_as_cavity():
    from CardiacAISegLib.models.postprocess import keep_one_component_per_structure

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    lab = np.zeros((1, 64, 64), np.uint8)
    lab[0][r < 20] = 2
    lab[0][r < 13] = 1
    papillary = np.hypot(yy - 30, xx - 36) < 2.5
    lab[0][papillary] = 2          # a dark muscle the network called myocardium
    lab[0][np.hypot(yy - 35, xx - 27) < 1.5] = 0   # and a trabecula it left as background
    out = keep_one_component_per_structure(lab)
    assert (out[0][r < 13] == 1).all()
    assert (out[0][(r >= 13.5) & (r < 19.5)] == 2).all()
    raw = keep_one_component_per_structure(lab, fill_cavity=False)
    assert (raw[0][papillary] == 0).all(), "without filling the island is a stray component, not LV"


def test_an_apical_cavity_shifted_off_the_slice_above_is_kept():
    """Slices far apart or an oblique LV leave the apical cavity touching none of the slice above
    it: as a separate 3D component it was removed and the myocardium around it kept (probe 38:
    ACDC 093 at 13 mm slices, three apical slices without a cavity, LV EDV -19 %). A piece ringed
    by the kept myocardium on slices without the main cavity, near it, is the cavity; a second
    piece on a slice that has the cavity, or one far off, is not."""
    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.models.postprocess import keep_one_component_per_structure

    yy, xx = np.mgrid[:96, :96]
    lab = np.zeros((8, 96, 96), np.uint8)
    for k in range(8):
        cy, cx = (40, 40) if k < 5 else (40, 51)    # the apical slices 11 px (16.5 mm) aside
        r = np.hypot(yy - cy, xx - cx)
        lab[k][r < 10] = MYO
        lab[k][r < 5] = LV
    lab[2][np.hypot(yy - 40, xx - 70) < 3] = LV     # a blob beside a slice that has the cavity
    out = keep_one_component_per_structure(lab, spacing_rc=(1.5, 1.5))
    assert (out[5:][lab[5:] == LV] == LV).all(), "the shifted apical cavity was removed"
    assert (out[2][np.hypot(yy - 40, xx - 70) < 3] == 0).all()
    assert not (keep_one_component_per_structure(lab)[5:] == LV).any()   # without the spacing: as before
    assert not (keep_one_component_per_structure(lab, spacing_rc=(3.0, 3.0))[5:] == LV).any()   # 33 mm aside: no


def test_heart_square_inference_matches_the_whole_field_on_a_phantom():
    """Two-stage cine inference (models.inference.predict_labels_in_heart_box): the box holds the
    whole heart and the labels in it are as good as the whole-field run's against the truth."""
    from CardiacAISegLib.models import inference, registry
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    study, _ = make_cine_phantom(seed=3, n_frames=2, n_slices=8, size=256, pixel_mm=1.4)
    loaded = registry.load_model("unet-light")
    sp = (study.spacing[1], study.spacing[0])
    spec = loaded.card["input"]
    whole = inference.predict_labels(loaded.module, study.images[0], sp, spec["pixel_mm"], spec["size_multiple"])
    boxed, box, _ = inference.predict_labels_in_heart_box(loaded.module, study.images[0], sp, spec["pixel_mm"], crop_mm=160,
                                                          size_multiple=spec["size_multiple"])
    assert box is not None                                  # a 358 mm field gets a square
    heart = study.labels[0] > 0
    assert heart[:, box[0], box[1]].sum() == heart.sum()    # the whole heart is inside it
    truth = study.labels[0]

    def dice(pred, c):
        a, b = pred == c, truth == c
        return 2 * (a & b).sum() / max(1, a.sum() + b.sum())

    for c in (1, 2):   # LV pool and myocardium against the phantom's truth: no worse in the square
        assert dice(boxed, c) > dice(whole, c) - 0.03, (c, dice(boxed, c), dice(whole, c))


def test_edge_slices_are_the_ends_of_the_heart():
    from CardiacAISegLib.models.training_data import edge_slices

    stack = np.zeros((8, 4, 4), np.uint8)
    stack[2:6, 1, 1] = 1
    assert edge_slices(stack).tolist() == [False, True, True, False, False, True, True, False]
    stack[:] = 0
    stack[0:8, 2, 2] = 2   # the heart fills the stack: no empty slice beyond it
    assert edge_slices(stack).tolist() == [True] + [False] * 6 + [True]
    assert not edge_slices(np.zeros((5, 3, 3), np.uint8)).any()


def test_edge_slice_weight_draws_the_ends_more_often(shared_data, monkeypatch):
    """The weighted sampler draws edge slices about w x as often per slice as the others."""
    from CardiacAISegLib.models import training
    from CardiacAISegLib.models.training_data import labelled_slices_with_sets

    items, _, edges = labelled_slices_with_sets([shared_data / "acdc" / "patient001"], 1.25)
    assert len(edges) == len(items) and 0 < edges.sum() < len(edges)
    from CardiacAISegLib.models import training_data

    drawn, real_crop = [], training_data.random_crop

    def spy(img, lbl, size, rng, heart_bias=0.8):
        drawn.append(next(i for i, it in enumerate(items) if it[0] is img))
        return real_crop(img, lbl, size, rng, heart_bias)

    monkeypatch.setattr(training_data, "random_crop", spy)
    monkeypatch.setattr(training_data, "labelled_slices_with_sets", lambda *a, **k: (items, ["full"] * len(items), edges))
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        cfg = training.TrainConfig(data=str(shared_data / "acdc"), out_dir=out, epochs=3, batch=4, slices_per_epoch=len(items),
                                   crop=96, patch=64, train_patients=["patient001"], val_patients=[], threads=1,
                                   edge_slice_weight=4.0)
        training.train(cfg, log=lambda *_: None)
    drawn = np.array(drawn)
    per_edge = np.isin(drawn, np.flatnonzero(edges)).sum() / edges.sum()
    per_other = np.isin(drawn, np.flatnonzero(~edges)).sum() / (~edges).sum()
    assert per_edge > 1.3 * per_other, (per_edge, per_other)


def test_distillation_loss_is_zero_only_at_the_teachers_output():
    import torch

    from CardiacAISegLib.models.training import distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 8, 8)
    assert distillation_loss(teacher.clone(), teacher).item() < 1e-6
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = distillation_loss(student, teacher)
    assert loss.item() > 0.05
    loss.backward()
    # one gradient step moves the student towards the teacher
    with torch.no_grad():
        closer = student - 5.0 * student.grad
    assert distillation_loss(closer, teacher).item() < loss.item()


def _one_class_missed(target, missed_class, to_class=0, scale=20.0):
    """Logits that draw ``target`` exactly except ``missed_class``, drawn as ``to_class``."""
    drawn = target.clone()
    drawn[target == missed_class] = to_class
    return scale * torch.nn.functional.one_hot(drawn, 4).permute(0, 3, 1, 2).float()


def _ring_target():
    """LV disc, myocardial ring and an RV of the same pixel count as the LV, on 64 x 64."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 24) ** 2).float().sqrt()
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    target[0][r < 14] = 2
    target[0][r < 9] = 1
    n_lv = int((target == 1).sum())
    outside = (r.flatten() >= 16).nonzero()[:, 0]
    target[0].view(-1)[outside[:n_lv]] = 3
    assert int((target == 3).sum()) == n_lv
    return target


def test_rv_weight_counts_a_missed_rv_more_than_an_equal_missed_lv():
    """train --rv-weight: with weight 1 the losses are the plain ones; above 1 an RV missed costs
    more than an LV of the same size missed, in the supervised and the partial-label loss alike
    (with every case full the two agree) and in the distillation."""
    from CardiacAISegLib.models.partial_labels import partial_label_loss
    from CardiacAISegLib.models.loss_weights import rv_pixel_weights
    from CardiacAISegLib.models.training import distillation_loss, soft_dice_ce_loss

    target = _ring_target()
    no_lv, no_rv = _one_class_missed(target, 1), _one_class_missed(target, 3)
    plain = soft_dice_ce_loss(no_rv, target, 4)
    ce = torch.nn.functional.cross_entropy(no_rv, target)
    p, onehot = torch.softmax(no_rv, 1), torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    dice = (2 * (p * onehot).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    assert plain.item() == pytest.approx((ce + 1 - dice[1:].mean()).item(), rel=1e-6)
    assert soft_dice_ce_loss(no_rv, target, 4, rv_weight=1.0).item() == plain.item()
    assert soft_dice_ce_loss(no_lv, target, 4).item() == pytest.approx(plain.item(), rel=1e-3)

    full = torch.ones(1, dtype=torch.bool)
    for loss in (lambda lg, w: soft_dice_ce_loss(lg, target, 4, rv_weight=w),
                 lambda lg, w: partial_label_loss(lg, target, full, 4, rv_weight=w)):
        assert loss(no_rv, 3.0).item() > 1.3 * loss(no_lv, 3.0).item()
        assert loss(no_rv, 3.0).item() > loss(no_rv, 1.0).item()
    assert partial_label_loss(no_rv, target, full, 4, rv_weight=3.0).item() == \
        pytest.approx(soft_dice_ce_loss(no_rv, target, 4, rv_weight=3.0).item(), rel=1e-5)

    teacher = _one_class_missed(target, -1)   # the teacher draws the target
    weights = rv_pixel_weights(target, 3.0)
    assert rv_pixel_weights(target, 1.0) is None
    assert distillation_loss(no_rv, teacher, pixel_weights=weights).item() > \
        1.3 * distillation_loss(no_lv, teacher, pixel_weights=weights).item()
    assert distillation_loss(no_rv, teacher, pixel_weights=None).item() == \
        pytest.approx(distillation_loss(no_lv, teacher).item(), rel=1e-3)


def test_teacher_read_four_ways_gives_the_mean_of_its_readings():
    """--distill-flips: the softened probabilities of the teacher's logits are the mean of its
    readings of the batch as is, mirrored either way and turned a half turn, each mapped back;
    a teacher that sees where it is (here: a left-right ramp) is not the same read mirrored."""
    import torch

    from CardiacAISegLib.models.training import teacher_logits

    def teacher(x):   # class 1 grows to the right of the image, class 2 downwards, class 0 with the signal
        rows = torch.linspace(0, 1, x.shape[-2])[:, None].expand(x.shape[-2], x.shape[-1])
        cols = torch.linspace(0, 1, x.shape[-1])[None, :].expand(x.shape[-2], x.shape[-1])
        return torch.stack([x[:, 0], 3 * cols.expand_as(x[:, 0]), 2 * rows.expand_as(x[:, 0])], 1)

    x = torch.rand(2, 1, 6, 8)
    t = 2.0
    p = torch.softmax(teacher_logits(teacher, x, t, flips=True) / t, 1)
    readings = []
    for dims in ((), (-1,), (-2,), (-2, -1)):
        out = teacher(x.flip(dims) if dims else x)
        readings.append(torch.softmax((out.flip(dims) if dims else out) / t, 1))
    assert torch.allclose(p, sum(readings) / 4, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(2, 6, 8), atol=1e-6)
    assert not torch.allclose(p, readings[0], atol=1e-3)   # the ramps average out mirrored
    assert torch.equal(teacher_logits(teacher, x, t), teacher(x))   # one reading unless asked


def test_distillation_run_uses_the_teacher(short_run, tmp_path):
    """Distilling from the checkpoint a run starts from: the loss begins near zero (the student is
    the teacher), where the same run without distillation begins at the task loss."""
    from dataclasses import replace

    from CardiacAISegLib.models.training import train

    cfg, out, _ = short_run
    base = replace(cfg, epochs=1, resume=False, finetune_from=str(out / "best.pt"), lr=1e-6)
    taught = train(replace(base, out_dir=str(tmp_path / "d"), distill_from=str(out / "best.pt"), distill_weight=1.0),
                   log=lambda *_: None)
    plain = train(replace(base, out_dir=str(tmp_path / "p")), log=lambda *_: None)
    assert taught[0]["loss"] < 0.2 * plain[0]["loss"], (taught[0]["loss"], plain[0]["loss"])   # 0.10 vs 1.62 measured


class NeighbourReader(torch.nn.Module):
    """A 2.5D 'network' that reports which neighbour it saw: class 1 where the slice before is
    brighter than the slice after, class 3 where the slice after is, class 0 with no neighbours."""

    context_slices = 1

    def forward(self, x):
        before, after = x[:, 0:1], x[:, 2:3]
        none = ((before == 0) & (after == 0)).float()
        return torch.cat([100 * none, before - after, torch.zeros_like(before), after - before], 1)


def test_2_5d_inference_gives_each_slice_its_neighbours_in_stack_order():
    """Slices brighten along the stack: every inner slice sees a darker slice before it and a
    brighter one after (class 3); the stack ends see zeros beyond them; slices that are not
    contiguous (a first pass on mid slices, perfusion key images) see no neighbours at all."""
    from CardiacAISegLib.models.inference import predict_labels

    vol = np.stack([np.full((32, 40), 0.2 + 0.15 * k, np.float32) for k in range(5)])
    vol[:, 0, 0] = 0.0   # the normalisation's low percentile, so no slice maps to zero
    labels = predict_labels(NeighbourReader(), vol, (1.25, 1.25), 1.25, 1, postprocess=False)
    inner = labels[1:4, 5:, 5:]
    assert (inner == 3).all(), "an inner slice did not get the slice before and after in order"
    assert (labels[0, 5:, 5:] == 3).all() and (labels[4, 5:, 5:] == 1).all(), "the stack ends did not read zeros beyond"
    alone = predict_labels(NeighbourReader(), vol, (1.25, 1.25), 1.25, 1, postprocess=False, contiguous=False)
    assert (alone[:, 5:, 5:] == 0).all(), "slices that are not contiguous got neighbours"


def test_widened_input_starts_at_the_one_slice_networks_output():
    """A 2.5D fine-tune starts from a one-slice network exactly (neighbour weights zero), so any
    change it makes is learnt from the neighbours."""
    from CardiacAISegLib.models.preprocess import with_context_slices
    from CardiacAISegLib.models.training import widen_input_channels

    torch.manual_seed(0)
    one, three = build("unet-light").eval(), build("unet-light", in_channels=3).eval()
    three.load_state_dict(widen_input_channels(one.state_dict(), three))
    assert three.context_slices == 1 and one.context_slices == 0
    vol = np.random.default_rng(0).random((4, 48, 48)).astype(np.float32)
    with torch.no_grad():
        a = one(torch.from_numpy(vol[:, None]))
        b = three(torch.from_numpy(with_context_slices(vol, 1)))
    assert torch.equal(a, b)


def test_context_augmentation_reverses_or_drops_neighbours_and_keeps_the_slice():
    from CardiacAISegLib.models.training_data import augment_context

    rng = np.random.default_rng(1)
    x = np.stack([np.stack([np.full((4, 4), v) for v in (1.0, 2.0, 3.0)]) for _ in range(200)]).astype(np.float32)
    out = augment_context(x.copy(), rng)
    assert (out[:, 1] == 2.0).all(), "the centre slice changed"
    before = out[:, 0, 0, 0]
    kinds = {float(v) for v in before}
    assert kinds == {0.0, 1.0, 3.0}, f"expected kept, reversed and dropped neighbours, got {kinds}"
    dropped = before == 0
    assert (out[dropped, 2] == 0).all() and 0.1 < dropped.mean() < 0.3


def test_card_context_slices_reaches_the_onnx_module_and_is_validated(tmp_path):
    """An ONNX file does not say what its channels mean: the card's input.context_slices does,
    and inference then stacks the neighbours as the torch network gets them."""
    pytest.importorskip("onnxruntime")
    from CardiacAISegLib.models.inference import predict_labels

    path = tmp_path / "w.onnx"
    torch.onnx.export(NeighbourReader(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "batch", 2: "rows", 3: "cols"}, "scores": {0: "batch", 2: "rows", 3: "cols"}})
    card = {"name": "ctx", "title": "t", "task": "cine", "version": "1", "classes": registry.INTERNAL_CLASSES,
            "input": {"pixel_mm": 1.25, "size_multiple": 1, "context_slices": 1},
            "weights": {"file": "w.onnx", "format": "onnx", "sha256": registry.sha256_of(path)}, "licence": "test"}
    module = registry._onnx_module(card, path)
    vol = np.stack([np.full((16, 16), 0.2 + 0.15 * k, np.float32) for k in range(4)])
    vol[:, 0, 0] = 0.0
    assert (predict_labels(module, vol, (1.25, 1.25), 1.25, 1, postprocess=False)[1:3, 4:, 4:] == 3).all()
    card["input"]["context_slices"] = -1
    with pytest.raises(CardiacInputError, match="context_slices"):
        registry.validate_card_for_import(card, tmp_path / "card.json")


def test_deep_supervision_gives_coarser_logits_in_training_only():
    from CardiacAISegLib.models.training import deep_supervision_loss, soft_dice_ce_loss

    net = build("unet-light", filters=[4, 8, 16, 32, 64], deep_supervision=2)
    x = torch.randn(2, 1, 64, 64)
    net.train()
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 64, 64), (2, 4, 32, 32), (2, 4, 16, 16)]
    net.eval()
    assert tuple(net(x).shape) == (2, 4, 64, 64)
    with pytest.raises(ValueError, match="deep_supervision must be 0-3"):
        build("unet-light", filters=[4, 8, 16, 32, 64], deep_supervision=4)

    # the target is taken to each scale: logits that draw it exactly at every scale score lower
    # than the same full-resolution logits with the coarse ones drawing the wrong class
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 16:48] = 1
    target[:, 24:40, 24:40] = 2

    def drawn(t, scale):
        small = t[:, scale // 2::scale, scale // 2::scale] if scale > 1 else t
        return 20.0 * torch.nn.functional.one_hot(small, 4).permute(0, 3, 1, 2).float()

    loss = lambda lg, t: soft_dice_ce_loss(lg, t, 4)  # noqa: E731
    exact = deep_supervision_loss([drawn(target, 1), drawn(target, 2), drawn(target, 4)], target, loss)
    wrong = deep_supervision_loss([drawn(target, 1), drawn(3 - target.clamp(max=2), 2), drawn(target, 4)], target, loss)
    assert exact.item() < 0.05 < wrong.item()
    # one tensor is the plain loss
    assert deep_supervision_loss(drawn(target, 1), target, loss).item() == pytest.approx(loss(drawn(target, 1), target).item())


def test_deep_supervision_run_trains_and_its_checkpoint_runs_as_a_plain_network(short_run, tmp_path):
    from dataclasses import replace

    from CardiacAISegLib.models.training import train

    cfg, _, _ = short_run
    params = {"filters": [8, 16, 32, 64, 128], "deep_supervision": 2}
    history = train(replace(cfg, out_dir=str(tmp_path / "ds"), arch_params=params), log=lambda *_: None)
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    net = build("unet-light", **params)
    net.load_state_dict(torch.load(tmp_path / "ds" / "best.pt", weights_only=True))
    net.eval()
    assert tuple(net(torch.zeros(1, 1, 96, 96)).shape) == (1, 4, 96, 96)


def test_a_deep_supervision_network_ships_and_exports_as_one_output(tmp_path):
    """The aux heads stay in the weights (the card's params rebuild them) but neither the
    registry's network nor its ONNX export runs them: one (N, 4, H, W) output, equal in both."""
    import copy

    from CardiacAISegLib.models.shipping import export_onnx, ship_model

    params = {"filters": [4, 8, 16, 32, 64], "deep_supervision": 2}
    torch.manual_seed(0)
    net = build("unet-light", **params)
    card = copy.deepcopy(registry.get_card("unet-light"))
    card.update(name="ds-test", default=False)
    card["architecture"]["params"] = params
    card.pop("onnx", None)
    folder = ship_model(net.state_dict(), card, dest_root=tmp_path)
    card = export_onnx(folder)
    assert card["onnx"]["parity_max_abs_diff"] < 1e-3   # export checked against torch (it raises otherwise)
    from CardiacAISegLib.models.registry import _build_module, read_card, verify_weights

    module = _build_module(read_card(folder), verify_weights(read_card(folder)))
    out = module(torch.zeros(1, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 4, 64, 64)


def test_an_ensemble_card_rebuilds_its_members_and_exports_their_mean_as_one_network(tmp_path):
    """Architecture "ensemble": the members' weights under one state dict, the output the mean of
    their log-probabilities (what tools/evaluate_cine.py measured), from the registry's torch
    module and from its ONNX export alike."""
    import copy

    from CardiacAISegLib.models.registry import _build_module, read_card, verify_weights
    from CardiacAISegLib.models.shipping import export_onnx, ship_model

    # small U-Nets: an untrained random γ-Net's recurrence alone leaves its ONNX export 3e-3 off
    members = [{"name": "unet-light", "params": {"filters": [4, 8, 16, 32, 64]}},
               {"name": "unet-light", "params": {"filters": [6, 8, 16, 32, 64]}}]
    torch.manual_seed(0)
    parts = [build(m["name"], **m["params"]).eval() for m in members]
    net = build("ensemble", members=members)
    net.load_state_dict({f"members.{i}.{k}": v for i, part in enumerate(parts) for k, v in part.state_dict().items()})
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = (torch.log_softmax(parts[0](x), 1) + torch.log_softmax(parts[1](x), 1)) / 2
        assert torch.allclose(net.eval()(x), expected, atol=1e-5)
    card = copy.deepcopy(registry.get_card("unet-light"))
    card.update(name="ensemble-test", default=False)
    card["architecture"] = {"name": "ensemble", "params": {"members": members}}
    card.pop("onnx", None)
    folder = ship_model(net.state_dict(), card, dest_root=tmp_path)
    module = _build_module(read_card(folder), verify_weights(read_card(folder)))
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-5)
    assert export_onnx(folder)["onnx"]["parity_max_abs_diff"] < 1e-3


def test_weights_stored_as_half_precision_ship_at_half_the_bytes_and_run_as_evaluated(tmp_path):
    """A card shipped with stored_precision float16 (the γ-Net ensemble, over the size limit in
    float32): weights and ONNX export at about half the bytes, the network computing in float32 on
    exactly the rounded weights tools/evaluate_cine.py --half-weights measured, the export within
    the parity bound."""
    import copy

    import onnx
    from onnx import TensorProto

    from CardiacAISegLib.models.registry import _build_module, read_card, verify_weights
    from CardiacAISegLib.models.shipping import HALF_PRECISION, export_onnx, rounded_to_half, ship_model

    params = {"filters": [8, 16, 32, 48, 64]}
    torch.manual_seed(0)
    net = build("unet-light", **params).eval()
    card = copy.deepcopy(registry.get_card("unet-light"))
    card.update(name="half-test", default=False)
    card["architecture"]["params"] = params
    card.pop("onnx", None)
    full = read_card(ship_model(net.state_dict(), dict(card, name="full-test"), dest_root=tmp_path))
    full = export_onnx(Path(full["_folder"]))
    half_folder = ship_model(net.state_dict(), card, dest_root=tmp_path, precision=HALF_PRECISION)
    half = export_onnx(half_folder)
    assert half["weights"]["stored_precision"] == half["onnx"]["stored_precision"] == HALF_PRECISION
    assert half["weights"]["bytes"] < 0.6 * full["weights"]["bytes"]
    assert half["onnx"]["bytes"] < 0.6 * full["onnx"]["bytes"]
    assert half["onnx"]["parity_max_abs_diff"] < 1e-3
    stored = torch.load(half_folder / "weights.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    exported = onnx.load(str(half_folder / "model.onnx"))
    assert max(int(np.prod(i.dims)) for i in exported.graph.initializer if i.data_type == TensorProto.FLOAT) < 64

    module = _build_module(read_card(half_folder), verify_weights(read_card(half_folder)))
    evaluated = build("unet-light", **params).eval()
    evaluated.load_state_dict(rounded_to_half(net.state_dict()))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert next(module.parameters()).dtype == torch.float32
        assert torch.equal(module(x), evaluated(x))   # the weights measured are the weights run
        assert not torch.equal(module(x), net(x))       # and they are rounded (not the float32 ones)
    with pytest.raises(ValueError, match="stored precision"):
        ship_model(net.state_dict(), card, dest_root=tmp_path / "other", precision="int8")


def test_cyclic_learning_rate_keeps_a_snapshot_at_each_cycle_end_and_they_average(short_run, tmp_path):
    import subprocess
    import sys
    from dataclasses import replace

    from CardiacAISegLib.models.training import lr_schedule, train

    cfg, _, _ = short_run
    cycled = replace(cfg, out_dir=str(tmp_path / "swa"), epochs=4, lr_cycle_epochs=2)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched, rates = lr_schedule(torch, opt, cycled), []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        sched.step()
    # each cycle starts again at the full rate and decays within it
    assert rates[0] == rates[2] == pytest.approx(cfg.lr) and rates[1] < rates[0]
    train(cycled, log=lambda *_: None)
    out = tmp_path / "swa"
    snapshots = sorted(p.name for p in out.glob("snapshot-*.pt"))
    assert snapshots == ["snapshot-002.pt", "snapshot-004.pt"]
    a, b = (torch.load(out / n, weights_only=True) for n in snapshots)
    key = next(k for k in a if k.endswith("weight") and a[k].is_floating_point())
    assert not torch.equal(a[key], b[key]), "the second cycle did not train"
    tool = Path(__file__).resolve().parents[2] / "tools" / "average_runs.py"
    subprocess.run([sys.executable, str(tool), str(out / snapshots[0]), str(out / snapshots[1]), "--out", str(tmp_path / "avg")],
                   check=True, capture_output=True)
    avg = torch.load(tmp_path / "avg" / "best.pt", weights_only=True)
    assert torch.allclose(avg[key], (a[key] + b[key]) / 2)


def test_cli_refuses_cycles_that_do_not_end_with_the_run(tmp_path, capsys):
    from CardiacAISegLib import cli

    rc = cli.main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "50", "--lr-cycle-epochs", "20"])
    err = capsys.readouterr().err
    assert rc != 0 and "--lr-cycle-epochs" in err and "divide --epochs 50" in err
    assert not (tmp_path / "o").exists(), "nothing written for a refused run"


def _perfusion_card():
    card = json.loads((registry.SHIPPED_DIR / "perfusion-resunet" / "model.json").read_text())
    card.update(name="user-perf", title="test", licence="test")
    card.pop("default", None)
    return card


def test_import_refuses_card_fields_the_engine_would_ignore_or_choke_on(tmp_path, user_models):
    """Probe 95: a perfusion card's number pixel_mm was accepted and ignored (the network runs on
    the native grid); pre_foot_frames "3" imported, then every analysis ended in a TypeError; a
    text metric imported, then `cardiacaiseg models` stopped on it with a traceback's message."""
    card = _perfusion_card()
    registry.validate_card_for_import(card, "card.json")   # the shipped card itself passes
    for field, value, said in (("pixel_mm", 2.5, "input.pixel_mm of a perfusion network must be null"),
                               ("pre_foot_frames", "3", "input.pre_foot_frames must be a whole number"),
                               ("pre_foot_frames", -2, "input.pre_foot_frames must be a whole number"),
                               ("pre_foot_frames", 48, "input.pre_foot_frames must be a whole number")):
        bad = json.loads(json.dumps(card))
        bad["input"][field] = value
        with pytest.raises(CardiacInputError, match=said):
            registry.validate_card_for_import(bad, "card.json")
    weights, card_path = write_user_model(tmp_path, "user-metrics")
    data = json.loads(card_path.read_text())
    data["metrics"] = {"dice_lv": "0.93"}
    card_path.write_text(json.dumps(data))
    with pytest.raises(CardiacInputError, match=r"metrics\.dice_lv must be a number"):
        registry.import_model(weights, card_path)
    assert not (user_models / "user-metrics").exists()


def test_a_card_saved_with_a_byte_order_mark_imports(tmp_path, user_models):
    """Notepad and PowerShell 5 write UTF-8 with a BOM: refused as "Unexpected UTF-8 BOM"."""
    weights, card_path = write_user_model(tmp_path, "user-bom")
    card_path.write_bytes(b"\xef\xbb\xbf" + card_path.read_bytes())
    assert registry.import_model(weights, card_path)["name"] == "user-bom"
    registry._CACHE.clear()
    assert "user-bom" in [c["name"] for c in registry.list_models("cine")]


def test_models_lists_every_card_even_one_with_a_text_metric(tmp_path, user_models, capsys):
    """A card installed before metrics were checked (or edited by hand) stopped the listing
    half-way with exit 1."""
    from CardiacAISegLib.cli import main

    weights, card_path = write_user_model(tmp_path, "user-text-metric")
    registry.import_model(weights, card_path)
    installed = user_models / "user-text-metric" / "model.json"
    data = json.loads(installed.read_text())
    data["metrics"] = {"dice_lv": "0.93", "dice_myo": 0.81}
    installed.write_text(json.dumps(data))
    registry._CACHE.clear()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "user-text-metric" in out and "dice_lv=0.93" in out and "dice_myo=0.810" in out
    assert "unet-light" in out


def test_an_interrupted_replacement_keeps_the_installed_model(tmp_path, user_models, monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into an exception) between moving the installed
    model aside and moving the new one in removed both; a run killed there left the model under a
    hidden name, gone from `models`. The earlier model is put back, now and on the next import."""
    import os

    weights, card_path = write_user_model(tmp_path, "user-keep")
    registry.import_model(weights, card_path)
    before = (user_models / "user-keep" / "model.json").read_text()
    real_rename = os.rename
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:   # the new copy moving in
            raise KeyboardInterrupt
        return real_rename(src, dst)
    monkeypatch.setattr(registry.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.import_model(weights, card_path, overwrite=True)
    monkeypatch.setattr(registry.os, "rename", real_rename)
    assert (user_models / "user-keep" / "model.json").read_text() == before
    assert [p.name for p in user_models.iterdir()] == ["user-keep"]
    # a run killed there (nothing could put it back): the next import does
    os.rename(user_models / "user-keep", user_models / ".replaced-user-keep-0123abcd")
    (tmp_path / "other").mkdir()
    weights2, card2 = write_user_model(tmp_path / "other", "user-other")
    registry.import_model(weights2, card2)
    assert sorted(p.name for p in user_models.iterdir()) == ["user-keep", "user-other"]
    # put back before the name is checked: the same name again still needs --force (review)
    os.rename(user_models / "user-keep", user_models / ".replaced-user-keep-4567cdef")
    with pytest.raises(CardiacInputError, match="already installed"):
        registry.import_model(weights, card_path)
    assert (user_models / "user-keep" / "model.json").read_text() == before


def test_a_model_that_cannot_run_is_said_before_a_run(tmp_path, user_models, capsys):
    """Probe 95: a perfusion ensemble whose cine member's weights were gone was listed as usable
    (`models --json`), offered by the selectors like any other, and `batch --model` of a model
    whose weights were gone ran every study into an error row (exit 1; the folder then needed
    --resume or --force). Said in `models`, the Logic's list (the selectors' summary) and refused by
    `batch` before --out is written."""
    import shutil

    from CardiacAISegLib.cli import main
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.phantoms.phantom import write_phantom

    weights, card_path = write_user_model(tmp_path, "user-member")
    registry.import_model(weights, card_path)
    shipped = registry.SHIPPED_DIR / "perfusion-resunet"
    ensemble = user_models / "user-ensemble"
    ensemble.mkdir()
    card = json.loads((shipped / "model.json").read_text())
    card.update(name="user-ensemble", default=False)
    card.pop("onnx", None)
    card["input"]["segmentation"]["cine_model"] = ["unet-light", "user-member"]
    (ensemble / "model.json").write_text(json.dumps(card))
    shutil.copyfile(shipped / card["weights"]["file"], ensemble / card["weights"]["file"])
    registry._CACHE.clear()
    assert registry.runnable_problem(registry.get_card("user-ensemble")) is None
    (user_models / "user-member" / "model.ts").unlink()
    registry._CACHE.clear()
    problem = registry.runnable_problem(registry.get_card("user-ensemble"))
    assert problem.startswith("its cine network 'user-member' cannot run:") and "missing" in problem
    assert main(["models", "--json"]) == 0
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["user-ensemble"]["usable"] is False and listed["user-member"]["usable"] is False
    assert listed["unet-light"]["usable"] is True
    from CardiacAISegLib import scene as sc

    offered = {c["name"]: c for c in CardiacAISegLogic(sc.new_scene()).availableModels()}
    assert offered["user-member"]["summary"].startswith("CANNOT RUN: ") and offered["unet-light"]["problem"] is None
    study = write_phantom("cine", tmp_path / "cohort" / "a", seed=1, size=48, n_frames=6)[0]["cine.nii.gz"]
    assert study.exists()
    out = tmp_path / "batch"
    assert main(["batch", str(tmp_path / "cohort"), "--out", str(out), "--model", "user-member", "--workers", "1",
                 "--quiet"]) == 2
    assert "user-member" in capsys.readouterr().err and not out.exists()


def test_a_folder_whose_card_is_not_used_is_said_so_and_replaced_with_force(tmp_path, user_models):
    """Probe 95: a user folder holding a broken card (`models` says "not used") was refused as
    "a model with this name is already installed", and with --force as "holds more than a model
    card and its weights", though it held only that card."""
    (user_models / "user-broken").mkdir(parents=True)
    (user_models / "user-broken" / "model.json").write_text("{not json")
    registry._CACHE.clear()
    weights, card_path = write_user_model(tmp_path, "user-broken")
    with pytest.raises(CardiacInputError, match=r"holds a model that is not used \(model card is not valid JSON"):
        registry.import_model(weights, card_path)
    assert registry.import_model(weights, card_path, overwrite=True)["name"] == "user-broken"
    registry._CACHE.clear()
    assert "user-broken" in [c["name"] for c in registry.list_models("cine")]
    (user_models / "user-broken" / "notes.txt").write_text("mine")
    with pytest.raises(CardiacInputError, match=r"holds more than a model card and its weights \(model.json, model.ts, notes.txt\)"):
        registry.import_model(weights, card_path, overwrite=True)


def test_a_training_runs_files_imported_wrongly_are_named(tmp_path, user_models):
    """Probe 95: a run's last.pt imported as weights gave torch's 'Unexpected key(s) "model",
    "optimizer"', and best.pt under a card with other architecture.params a size-mismatch line,
    neither saying what to do."""
    from CardiacAISegLib.models.architectures import build

    net = build("unet-light", filters=[4, 8, 16, 32, 64])
    best = tmp_path / "best.pt"
    torch.save(net.state_dict(), best)
    last = tmp_path / "last.pt"
    torch.save({"model": net.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1}, last)
    card = {"name": "user-run", "title": "a run", "task": "cine", "version": "1",
            "classes": ["background", "LV blood pool", "LV myocardium", "RV"], "input": {"pixel_mm": 1.25},
            "architecture": {"name": "unet-light", "params": {"filters": [8, 16, 32, 64, 128]}},
            "weights": {"file": "w.pt", "format": "state_dict", "sha256": registry.sha256_of(last)}, "licence": "test"}
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(card))
    with pytest.raises(CardiacInputError, match=r"last.pt: is a training run's resumable state .* import the run's best.pt"):
        registry.import_model(last, card_path)
    card["weights"]["sha256"] = registry.sha256_of(best)
    card_path.write_text(json.dumps(card))
    with pytest.raises(CardiacInputError, match=r"best.pt: the weights do not fit the network the card builds \(unet-light "
                                                r"with architecture.params \{'filters': \[8, 16, 32, 64, 128\]\}\)"):
        registry.import_model(best, card_path)
    assert not (user_models / "user-run").exists()


def test_weights_digest_is_read_once_until_the_file_changes(tmp_path, monkeypatch):
    """The Slicer selectors ask at every refresh whether each model can run, which hashed every
    weights file again (tens of MB; final read of session 44): a settled file is read once, and
    a file changed since (another size, mtime or inode) is read again."""
    import builtins
    import os

    from CardiacAISegLib.models import registry

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"a" * 1000)
    old = weights.stat().st_mtime - 60
    os.utime(weights, (old, old))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    first = registry.sha256_of(weights)
    assert registry.sha256_of(weights) == first and opened.count(str(weights)) == 1
    weights.write_bytes(b"b" * 1000)   # the same size, written now: read again, every time
    second = registry.sha256_of(weights)
    assert second != first and registry.sha256_of(weights) == second and opened.count(str(weights)) == 3
