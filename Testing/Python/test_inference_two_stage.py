"""Two-stage cine inference (models/inference.py): the model card's ``input.heart_crop_mm`` decides
it; the heart's square is mapped back exactly onto the input grid; whole field when the card does
not ask for it, the field is small or no heart is found; the shipped default is measured in the
mode it runs in."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CardiacAISegLib.errors import CardiacInputError  # noqa: E402
from CardiacAISegLib.models import inference, registry  # noqa: E402
from CardiacAISegLib.models.registry import LoadedModel  # noqa: E402
from CardiacAISegLib.readers import load_study  # noqa: E402
from CardiacAISegLib.study import Study, affine_from_spacing  # noqa: E402


class IntensityClassifier(torch.nn.Module):
    """Class = nearest of the intensities (0, 1, 0.5, 0.25), pixel by pixel: a 'network' whose
    answer is known and does not depend on where the image was cut."""

    def forward(self, x):
        centres = torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)
        return -100.0 * (x - centres) ** 2


class ShapeRecorder(torch.nn.Module):
    """Records the (rows, cols) of every input the network is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.shapes = net, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.net(x)


def off_centre_heart(rows=240, cols=200, spacing_rc=(1.25, 1.25), centre_mm=(70.0, 190.0), slices=5):
    """A field of rows x cols pixels with a heart (LV pool, myocardium, RV) drawn in mm far from
    the centre (near the top right), as intensities the IntensityClassifier labels exactly."""
    yy, xx = np.mgrid[:rows, :cols]
    y_mm, x_mm = yy * spacing_rc[0], xx * spacing_rc[1]
    d = np.hypot(y_mm - centre_mm[0], x_mm - centre_mm[1])
    truth = np.zeros((slices, rows, cols), np.uint8)
    for k in range(slices):
        shrink = 1 - 0.06 * abs(k - slices // 2)
        truth[k][d < 30 * shrink] = 2
        truth[k][d < 20 * shrink] = 1
        truth[k][np.hypot(y_mm - centre_mm[0] + 5, x_mm - centre_mm[1] + 45) < 16 * shrink] = 3
    img = np.zeros(truth.shape, np.float32)
    img[truth == 1], img[truth == 2], img[truth == 3] = 1.0, 0.5, 0.25
    study = Study(images=img[None], ijk_to_ras=affine_from_spacing((spacing_rc[1], spacing_rc[0], 8.0)), name="off-centre")
    return study, truth


def card_with(crop_mm=None, base=None):
    card = json.loads(json.dumps({k: v for k, v in (base or registry.get_card("unet-light")).items() if not k.startswith("_")}))
    card["input"].pop("heart_crop_mm", None)
    card["input"]["tta"] = "none"   # the geometry of one reading per slice (the shipped card reads 4)
    if crop_mm:
        card["input"]["heart_crop_mm"] = crop_mm
    return card


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_square_labels_equal_whole_field_labels_exactly_on_the_model_grid():
    """On a 1.25 mm grid (no resampling) a pixel-wise network must give the very same labels in
    the square as on the whole field, and background outside: any shift or transposition in the
    mapping back would show."""
    study, truth = off_centre_heart()
    net = IntensityClassifier()
    vol, sp = study.images[0], (1.25, 1.25)
    whole = inference.predict_labels(net, vol, sp, 1.25)
    boxed, box, reason = inference.predict_labels_in_heart_box(net, vol, sp, 1.25, crop_mm=160)
    assert reason is None and box is not None
    assert np.array_equal(whole, truth)
    assert np.array_equal(boxed, whole)
    rows, cols = box
    assert (rows.stop - rows.start, cols.stop - cols.start) == (128, 128)   # 160 mm at 1.25 mm
    assert truth[:, rows, cols].astype(bool).sum() == truth.astype(bool).sum()
    # the square sits on the heart (top right), not in the middle of the field
    assert rows.start == 0 and cols.stop == 200


@pytest.mark.parametrize("seed", range(4))
def test_cleaning_the_box_alone_equals_cleaning_the_full_grid(seed):
    """predict_labels_in_box cleans (largest component, LV cavity fill) inside the box only: with
    nothing outside, that must equal the clean-up of the full grid, strays, holes and structures
    cut by the box's edge included."""
    from scipy import ndimage

    from CardiacAISegLib.models.postprocess import keep_one_component_per_structure

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((4, 60, 70)), (0.5, 3, 3))
    inside = np.digitize(field, np.quantile(field, [0.4, 0.6, 0.75])).astype(np.uint8)   # blobs of 0-3
    inside[:, 20:30, 25:35][inside[:, 20:30, 25:35] != 1] = 0      # holes in whatever LV is there
    full = np.zeros((4, 100, 120), np.uint8)
    box = (slice(15, 75), slice(50, 120))                           # touches the right edge of the grid
    full[:, box[0], box[1]] = inside
    expected = keep_one_component_per_structure(full)
    assert (expected != full).sum() > 50            # strays were removed / holes filled: not a vacuous check
    embedded = np.zeros_like(full)
    embedded[:, box[0], box[1]] = keep_one_component_per_structure(inside)
    assert np.array_equal(embedded, expected)


def test_anisotropic_pixels_land_where_the_heart_is():
    """Rows 1.6 mm, columns 1.1 mm: the square and its labels stay on the heart (a row/column
    mix-up would move them) and match the whole-field run against the truth."""
    study, truth = off_centre_heart(rows=200, cols=300, spacing_rc=(1.6, 1.1), centre_mm=(220.0, 80.0))
    net = IntensityClassifier()
    vol, sp = study.images[0], (1.6, 1.1)
    whole = inference.predict_labels(net, vol, sp, 1.25)
    boxed, box, _ = inference.predict_labels_in_heart_box(net, vol, sp, 1.25, crop_mm=160)
    assert box is not None
    assert (box[0].stop - box[0].start) * 1.6 == pytest.approx(160, abs=1.6)
    assert (box[1].stop - box[1].start) * 1.1 == pytest.approx(160, abs=1.1)
    outside = np.ones(vol.shape, bool)
    outside[:, box[0], box[1]] = False
    assert not boxed[outside].any()
    for c in (1, 2, 3):
        assert dice(boxed == c, truth == c) > 0.97
        assert abs(dice(boxed == c, truth == c) - dice(whole == c, truth == c)) < 0.005
        centre_boxed = np.argwhere(boxed == c).mean(0)
        centre_truth = np.argwhere(truth == c).mean(0)
        assert np.abs(centre_boxed - centre_truth).max() < 0.5, (c, centre_boxed, centre_truth)


def test_a_heart_larger_than_the_square_gets_a_larger_square():
    """A 170 mm heart in a 160 mm setting: the square grows to hold it with its margin."""
    study, truth = off_centre_heart(rows=300, cols=300, centre_mm=(180.0, 180.0))
    vol = study.images[0].copy()
    big = np.zeros(vol.shape[1:], bool)
    big[60:196, 60:196] = True           # 136 px = 170 mm of myocardium-like tissue around it
    vol[:, big & (vol[0] == 0)] = 0.5
    box, reason = inference.cine_heart_box(IntensityClassifier(), vol, (1.25, 1.25), 1.25, crop_mm=160)
    assert reason is None
    side_mm = (box[0].stop - box[0].start) * 1.25
    assert side_mm >= 170 + 2 * inference.HEART_BOX_MARGIN_MM - 1.25
    assert box[0].start <= 60 and box[0].stop >= 196 and box[1].start <= 60 and box[1].stop >= 196


def test_the_card_decides_two_stage_or_whole_field():
    study, truth = off_centre_heart()
    runs = {}
    for crop in (None, 160):
        study.provenance.clear()
        net = ShapeRecorder(IntensityClassifier())
        labels = inference.segment_cine_study(study, LoadedModel(card_with(crop), net), device="cpu")
        runs[crop] = (labels[0], net.shapes, dict(study.provenance))
    labels, shapes, provenance = runs[None]
    assert shapes == [(240, 208)]                 # the whole field, once (200 cols padded to 208)
    assert "cine_heart_box" not in provenance
    labels2, shapes2, provenance2 = runs[160]
    assert shapes2 == [(240, 208), (128, 128)]    # first pass on the mid slices, then the square
    box = provenance2["cine_heart_box"]
    assert box["mm"] == [160.0, 160.0] and box["rows"] == [0, 128] and box["cols"] == [72, 200]
    assert np.array_equal(labels, labels2) and np.array_equal(labels, truth)
    assert not provenance2.get("warnings")


def test_small_field_and_no_heart_fall_back_to_the_whole_field():
    small, _ = off_centre_heart(rows=140, cols=140, centre_mm=(80.0, 80.0))   # 175 mm: within 1.15 x 160
    box, reason = inference.cine_heart_box(IntensityClassifier(), small.images[0], (1.25, 1.25), 1.25, crop_mm=160)
    assert box is None and "within 1.15 x the 160 mm heart square" in reason
    labels = inference.segment_cine_study(small, LoadedModel(card_with(160), IntensityClassifier()), device="cpu")
    assert labels[0].any() and small.provenance["cine_heart_box"] == {"whole_field": reason}
    assert not small.provenance.get("warnings")       # nothing lost: no warning

    empty = Study(images=np.zeros((1, 4, 240, 200), np.float32), ijk_to_ras=affine_from_spacing((1.25, 1.25, 8.0)), name="empty")
    labels = inference.segment_cine_study(empty, LoadedModel(card_with(160), IntensityClassifier()), device="cpu")
    assert not labels[0].any() and labels[0].shape == (4, 240, 200)
    assert "no heart found on the middle slices" in empty.provenance["cine_heart_box"]["whole_field"]
    # the run's note, from its record: not among the study's reading notes (the Slicer module
    # stamps those on the input node, where a run's note outlived the run)
    assert "segmented the whole field" in inference.heart_box_warning(empty.provenance["cine_heart_box"])
    assert not empty.provenance.get("warnings")
    assert inference.heart_box_warning(small.provenance["cine_heart_box"]) is None


def test_a_run_replaces_the_heart_square_record_of_the_run_before():
    """The study's ``cine_heart_box`` is the last run's record (results.json's model
    cine_heart_box, the note it gives): a whole-field card after a two-stage one writes none, so
    the previous run's square and its "no heart found" note were reported as the new run's."""
    empty = Study(images=np.zeros((1, 4, 240, 200), np.float32), ijk_to_ras=affine_from_spacing((1.25, 1.25, 8.0)), name="empty")
    inference.segment_cine_study(empty, LoadedModel(card_with(160), IntensityClassifier()), device="cpu")
    assert inference.heart_box_warning(empty.provenance["cine_heart_box"])
    inference.segment_cine_study(empty, LoadedModel(card_with(None), IntensityClassifier()), device="cpu")
    assert "cine_heart_box" not in empty.provenance


@pytest.mark.parametrize("value,problem", [(10, "at least 64"), ("160", "side in mm"), (True, "side in mm"),
                                           (float("nan"), "side in mm")])
def test_a_bad_heart_crop_setting_is_refused(tmp_path, value, problem):
    card = card_with()
    card["input"]["heart_crop_mm"] = value
    with pytest.raises(CardiacInputError) as e:
        registry.validate_card(card, tmp_path / "model.json")
    assert "input.heart_crop_mm" in str(e.value) and problem in str(e.value) and "model.json" in str(e.value)


def test_a_perfusion_card_cannot_ask_for_the_cine_square(tmp_path):
    card = card_with(base=registry.get_card(registry.default_model("perfusion")))
    card["input"]["heart_crop_mm"] = 160
    with pytest.raises(CardiacInputError, match="heart_crop_mm is for cine networks"):
        registry.validate_card(card, tmp_path / "model.json")


def test_two_stage_on_acdc_puts_labels_where_the_whole_field_does(shared_data):
    """The shipped default on a real study, both modes: the square holds every label the
    whole-field run finds in the heart, and the structures overlap and sit in the same place."""
    study = load_study(shared_data / "acdc" / "patient001")
    loaded = registry.load_model("unet-light")
    whole = inference.segment_cine_study(study, LoadedModel(card_with(None), loaded.module, loaded.runtime), device="cpu")
    study.provenance.pop("cine_heart_box", None)
    boxed = inference.segment_cine_study(study, LoadedModel(card_with(160), loaded.module, loaded.runtime), device="cpu")
    box = study.provenance["cine_heart_box"]
    assert "rows" in box, box
    rows, cols = slice(*box["rows"]), slice(*box["cols"])
    for t in (study.ed_frame, study.es_frame):
        assert boxed[t].shape == whole[t].shape == study.images[t].shape
        inside = np.zeros(whole[t].shape, bool)
        inside[:, rows, cols] = True
        assert not boxed[t][~inside].any()
        assert not whole[t][~inside].any(), "the whole-field run found heart outside the square"
        for c in (1, 2, 3):
            assert dice(boxed[t] == c, whole[t] == c) > 0.85, (t, c)
            truth = study.labels[t] == c
            assert dice(boxed[t] == c, truth) > dice(whole[t] == c, truth) - 0.05, (t, c)
            shift = np.abs(np.argwhere(boxed[t] == c)[:, 1:].mean(0) - np.argwhere(whole[t] == c)[:, 1:].mean(0)).max()
            assert shift < 1.5, (t, c, shift)


@pytest.mark.parametrize("name", ["unet-light", "gammanet"])
def test_a_shipped_cine_model_runs_in_the_mode_it_was_measured_in(name):
    """A shipped cine card's metrics are its shipped evaluation.json's (copied, never typed),
    and that evaluation measured the inference mode the card declares."""
    card = registry.get_card(name)
    evaluation = json.loads((Path(card["_folder"]) / "evaluation.json").read_text())
    summary = evaluation["summary"]
    assert summary.get("heart_crop_mm") == card["input"].get("heart_crop_mm")
    assert summary["tta"] == card["input"]["tta"]
    for key, value in card["metrics"].items():
        assert summary[key] == value, key
    assert evaluation["split"]["val"] == card["training"]["split"]["val"]
    assert {r["patient"] for r in evaluation["per_patient"]} == set(card["training"]["split"]["val"])


def test_square_widens_when_labels_reach_its_edge():
    """The heart square is found on the middle slices; a large basal RV ran past its edge
    (probe 23: 88 of 8,681 RV voxels outside on a heart 1.7x ACDC's size). Labels touching an
    edge inside the image give one wider square around all that was labelled; labels clear of
    the edges, or an edge that is the image's own, give none."""
    from CardiacAISegLib.models.inference import HEART_BOX_MARGIN_MM, _box_around_cut_labels

    box = (slice(50, 150), slice(60, 160))
    inside = np.zeros((3, 100, 100), np.uint8)
    inside[1, 30:60, 30:60] = 1
    assert _box_around_cut_labels({0: inside}, box, (256, 256), (1.0, 1.0)) is None
    cut = inside.copy()
    cut[0, 0:20, 40:70] = 3          # the basal RV runs out of the square's top edge
    rows, cols = _box_around_cut_labels({0: cut}, box, (256, 256), (1.0, 1.0))
    assert rows.stop - rows.start >= 100 and cols.stop - cols.start >= 100
    assert 50 - rows.start >= HEART_BOX_MARGIN_MM - 1   # the margin beyond the highest label
    at_image_edge = (slice(0, 100), slice(60, 160))   # the square's top is the image's: nothing lies beyond
    assert _box_around_cut_labels({0: cut}, at_image_edge, (256, 256), (1.0, 1.0)) is None


@pytest.mark.parametrize("far_cols, widened", [(195, "(2 times)"), (250, None)])
def test_square_widens_until_no_label_reaches_its_edge(monkeypatch, far_cols, widened):
    """One slice of another breath-hold lies centimetres off the others: widened once, around what
    the first square showed of it, the square still cut that slice's heart (probe 38: a basal
    slice 60 mm off, EDV -16 %, ESV -22 %, QC pass). It widens again until nothing reaches its
    edge, and after MAX_SQUARE_WIDENINGS the whole field is segmented. A stand-in network labels
    exactly what its window shows (the image holds the labels)."""
    truth = np.zeros((3, 256, 256), np.uint8)
    truth[1, 100:140, 100:140] = 2            # the middle slice's heart, where the square is found
    truth[0, 100:140, 150:far_cols] = 2       # the off slice: partly inside the first square
    monkeypatch.setattr(inference, "cine_heart_box",
                        lambda *a, **k: ((slice(80, 160), slice(80, 160)), "found", None))
    monkeypatch.setattr(inference, "predict_labels", lambda model, image, *a, **k: image.astype(np.uint8))
    spec = {"pixel_mm": 1.0, "size_multiple": 16, "tta": "none", "heart_crop_mm": 80.0}
    labels, heart = inference.segment_cine_volumes(None, {0: truth.astype(np.float32)}, (1.0, 1.0), spec)
    assert np.array_equal(labels[0], truth), "a label was cut off"
    if widened:
        assert heart["widened"].endswith(widened) and heart["cols"][1] >= far_cols
    else:
        assert heart["whole_field"].startswith("labels still reached the square's edge after 3 widenings")


@pytest.mark.parametrize("whole_cycle", [False, True])
def test_the_square_is_settled_on_the_reference_frame_before_every_frame_is_read(monkeypatch, whole_cycle):
    """Where labels keep reaching the square's edge (no heart in the image: noise, a resliced
    long-axis stack) every frame was read in each of the five squares: 20 frames of noise took
    177 s against 20 s for a real cine (probe 85). The square is settled on the reference frame
    first; every frame is then read once, and the reference frame's reading kept where its
    square stood. A stand-in network labels exactly what its window shows."""
    from CardiacAISegLib.models.inference import MAX_SQUARE_WIDENINGS

    n = 6
    truth = np.zeros((3, 256, 256), np.uint8)
    truth[1, 100:140, 100:140] = 2
    truth[0, 100:140, 100:250] = 2            # runs past every square: the whole field in the end
    reads = []

    def labels_of(model, image, *a, **k):
        reads.append(image.shape)
        return image.astype(np.uint8)

    def probabilities_of(model, image, *a, **k):
        reads.append(image.shape)
        return np.stack([(image == c) for c in range(4)], axis=1).astype(np.float32)

    monkeypatch.setattr(inference, "cine_heart_box", lambda *a, **k: ((slice(80, 160), slice(80, 160)), "found", None))
    monkeypatch.setattr(inference, "predict_labels", labels_of)
    monkeypatch.setattr(inference, "predict_volume_probabilities", probabilities_of)
    spec = {"pixel_mm": 1.0, "size_multiple": 16, "tta": "none", "heart_crop_mm": 80.0}
    volumes = {t: truth.astype(np.float32) for t in range(n)}
    labels, heart = inference.segment_cine_volumes(None, volumes, (1.0, 1.0), spec, reference=2,
                                                   n_frames=n if whole_cycle else None)
    assert all(np.array_equal(labels[t], truth) for t in range(n)), "a label was cut off"
    assert heart["whole_field"].startswith(f"labels still reached the square's edge after {MAX_SQUARE_WIDENINGS}")
    # the reference frame in each square it was tried in, then every frame once on the whole field
    assert len(reads) == MAX_SQUARE_WIDENINGS + 1 + n, len(reads)
    # a square the reference frame leaves uncut: every frame read once, the reference's reading kept
    reads.clear()
    truth[0] = 0
    volumes = {t: truth.astype(np.float32) for t in range(n)}
    labels, heart = inference.segment_cine_volumes(None, volumes, (1.0, 1.0), spec, reference=2,
                                                   n_frames=n if whole_cycle else None)
    assert len(reads) == n and "widened" not in heart and "whole_field" not in heart
