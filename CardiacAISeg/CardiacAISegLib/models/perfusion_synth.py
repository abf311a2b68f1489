"""Synthetic first-pass perfusion on real anatomy, to train the perfusion network.

No labelled perfusion data exists here, so ACDC end-diastolic label maps (real LV, myocardium
and RV shapes) and their cine images (real surrounding texture) become 2D+T first-pass series:
LV blood follows an AIF, the RV the same bolus 1-4.5 s earlier, the myocardium AIF (x) Fermi
with a smoothly varying MBF (optionally a defect). The body around the heart is not given the
cine's brightness (bright cine fat takes up little Gd): it gets a smooth random uptake, at times
as strong as the myocardium's, and often a dark epicardial fat band, so the network has to find
the wall by its shape and timing rather than by a dark surrounding.
Series come out in Gd units or as signal intensity (saturating), with noise, coil shading
and respiratory shifts, at random pixel sizes so the network needs no exact spacing.
"""
import numpy as np

from ..labels import LV, MYO, RV
from ..phantoms.phantom_perfusion import perfusion_aif

N_FRAMES = 48        # network input frames (Xue 2020)
PRE_FOOT = 3         # frames kept before the AIF foot


def _fermi_kernel(t, mbf, tau0, k, density=1.05):
    f = mbf * density / 60.0
    return f[..., None] * (1 + np.exp(-k * tau0)) / (1 + np.exp(k * (t - tau0)))


def _convolve(aif, kernels, dt):
    """Causal convolution of one AIF with many kernels, via FFT; (N, T)."""
    n = aif.size
    size = 2 * n
    fa = np.fft.rfft(aif, size)
    fk = np.fft.rfft(kernels, size, axis=-1)
    return np.fft.irfft(fa * fk, size, axis=-1)[..., :n] * dt


def _resample_pair(image, label, spacing_rc, pixel_mm):
    from scipy import ndimage

    zoom = (spacing_rc[0] / pixel_mm, spacing_rc[1] / pixel_mm)
    img = ndimage.zoom(image, zoom, order=1)
    lab = ndimage.zoom(label, zoom, order=0)
    return img, lab


def _crop(img, lab, size, rng):
    rr, cc = np.nonzero(lab)
    cy, cx = rr.mean() + rng.uniform(-size / 5, size / 5), cc.mean() + rng.uniform(-size / 5, size / 5)
    top, left = int(round(cy - size / 2)), int(round(cx - size / 2))
    out_i, out_l = np.zeros((size, size), np.float32), np.zeros((size, size), np.uint8)
    ys, xs, ye, xe = max(top, 0), max(left, 0), min(top + size, img.shape[0]), min(left + size, img.shape[1])
    out_i[ys - top:ye - top, xs - left:xe - left] = img[ys:ye, xs:xe]
    out_l[ys - top:ye - top, xs - left:xe - left] = lab[ys:ye, xs:xe]
    return out_i, out_l


def synth_sample(image, label, spacing_rc, rng, size=64, frames=N_FRAMES, dt=0.5, stress=None, signal=None,
                 vessels=0.0, vessel_rng=None, lead_s=0.0, pixel_mm=None):
    """One (frames, size, size) float32 series normalised to max 1 and its (size, size) labels.

    By default the series is the network's input window, starting ``PRE_FOOT`` (1-6) frames
    before the AIF foot, so the RV's bolus, 1-4.5 s earlier, is often cut. ``lead_s`` starts it
    that much earlier, as a scanner's series starts before the contrast arrives (give
    ``frames`` to match); every other draw stays the same.

    ``image``/``label``: a 2D cine slice (normalised 0..1) and its internal-convention labels.
    ``vessels``: the chance that the slice also cuts great vessels outside the heart (``_paint_vessels``),
    drawn from ``vessel_rng`` (default ``rng``; a generator of its own keeps the rest of a
    seeded series the same with and without them). ``pixel_mm`` fixes the pixel size instead of
    drawing it (the draw is still made, so the rest of a seeded series stays the same).
    """
    from scipy import ndimage

    # Up to 3.6 mm: some exports are downsampled crops (the QPerf examples' LV is ~12 px wide).
    drawn_mm = rng.uniform(1.4, 3.6)
    pixel_mm = drawn_mm if pixel_mm is None else float(pixel_mm)
    img, lab = _resample_pair(image, label, spacing_rc, pixel_mm)
    if rng.random() < 0.5:  # mirrored and rotated views, as vendors and readers differ
        img, lab = img[:, ::-1], lab[:, ::-1]
    rot = int(rng.integers(4))
    img, lab = np.rot90(img, rot), np.rot90(lab, rot)
    if rng.random() < 0.35:
        # Series cropped tightly around the heart (as QPerf stores them): a small crop, zero-padded.
        small = int(rng.integers(28, size - 8))
        img, lab = _crop(np.ascontiguousarray(img), np.ascontiguousarray(lab), small, rng)
        top, left = rng.integers(0, size - small + 1, 2)
        img = np.pad(img, ((top, size - small - top), (left, size - small - left)))
        lab = np.pad(lab, ((top, size - small - top), (left, size - small - left)))
    else:
        img, lab = _crop(np.ascontiguousarray(img), np.ascontiguousarray(lab), size, rng)

    stress = rng.random() < 0.5 if stress is None else stress
    t = np.arange(frames) * dt
    foot = (PRE_FOOT + rng.uniform(-2, 3)) * dt + lead_s
    aif = perfusion_aif(t, foot, rng.uniform(3.0, 6.0), rng.uniform(2.5, 4.0), recirc=rng.uniform(0.08, 0.2), plateau=rng.uniform(0.05, 0.15))
    rv = perfusion_aif(t, foot - rng.uniform(1.0, 4.5), rng.uniform(4.0, 8.0), rng.uniform(2.0, 3.5), recirc=0.1, plateau=0.1)

    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    lv_mask = lab == LV
    cy, cx = (np.nonzero(lv_mask)[0].mean(), np.nonzero(lv_mask)[1].mean()) if lv_mask.any() else (size / 2, size / 2)
    phi = np.arctan2(yy - cy, xx - cx)
    base = rng.uniform(2.0, 3.8) if stress else rng.uniform(0.5, 1.3)
    mbf = base * (1 + 0.12 * np.cos(phi - rng.uniform(0, 2 * np.pi)))
    if rng.random() < 0.35:  # a perfusion defect over a sector
        centre, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.4)
        d = np.abs(np.angle(np.exp(1j * (phi - centre))))
        mbf = mbf * np.where(d < width, rng.uniform(0.3, 0.7), 1.0)

    myo = lab == MYO
    conc = np.zeros((frames, size, size), np.float32)
    if myo.any():
        kern = _fermi_kernel(t, mbf[myo], rng.uniform(1.0, 4.0), rng.uniform(0.3, 1.5))
        conc[:, myo] = _convolve(aif, kern, dt).T
    # Papillary muscles and trabeculae (dark in the cine blood pool) do not fill with blood.
    lv_vals = img[lv_mask]
    blood_frac = np.clip(img / max(np.median(lv_vals), 1e-3), 0.2, 1.0) if lv_vals.size else np.ones_like(img)
    conc[:, lv_mask] = aif[:, None] * blood_frac[lv_mask][None]
    conc[:, lab == RV] = rv[:, None]
    body = (lab == 0) & (img > 0.08)
    if body.any():
        conc[:, body] = _body_enhancement(t, aif, dt, base, img, lab, body, rng)[:, body]
    if vessels:
        vessel_rng = rng if vessel_rng is None else vessel_rng
        if vessel_rng.random() < vessels:
            _paint_vessels(conc, img, lab, t, aif, rv, pixel_mm, vessel_rng)
    conc = ndimage.gaussian_filter(conc, (0, 0.6, 0.6))  # partial volume at the acquired resolution

    signal = rng.random() < 0.5 if signal is None else signal
    if signal:  # saturation-recovery signal: rises with Gd and saturates
        s0 = 0.15 + 0.3 * ndimage.gaussian_filter(img, 1.0)
        series = s0[None] * (1 + rng.uniform(3, 8) * conc / (conc + rng.uniform(2.0, 6.0)))
        series *= (img > 0.02)[None] | (lab > 0)[None]
    else:
        series = conc
    shading = 1 + rng.normal(0, 0.2) * (xx / size - 0.5) + rng.normal(0, 0.2) * (yy / size - 0.5)
    series = series * np.clip(shading, 0.5, 1.5)[None]
    series = series + rng.uniform(0.01, 0.05) * series.max() * rng.standard_normal(series.shape).astype(np.float32) / 3
    if rng.random() < 0.5:  # breathing: small rigid shifts away from the peak frames
        peak = int(np.argmax(aif))
        for f in range(frames):
            if abs(f - peak) > 4:
                series[f] = ndimage.shift(series[f], rng.normal(0, 1.0, 2), order=1, mode="nearest")
    series = np.maximum(series, 0)
    series /= max(series.max(), 1e-6)
    return series.astype(np.float32), lab.astype(np.uint8), aif


def key_image_sample(image, label, spacing_rc, rng, out_pixel_mm=1.25, fov_mm=200.0, vessels=0.5):
    """A cine-like key image of a synthetic first pass and its (rows, cols) labels, on a grid of
    ``out_pixel_mm`` covering about ``fov_mm``: to teach the cine network the key images it reads
    in perfusion (``perfusion_keyimage``), which differ from a bSSFP cine: the wall is dark in Gd
    units and grey in signal, the body takes up contrast, vessels shine beside the heart.

    As at inference: a series acquired at 1.4-3.6 mm pixels and 0.5-1.0 s frames (one per one or
    two heartbeats), the mean of ``perfusion_keyimage.key_frames`` around the LV peak (here the
    AIF's peak moved by up to a frame, as the bolus finder's estimate may be), resampled to the
    network's pixel size bilinearly. Raises ValueError when the slice's labels leave the field.
    """
    from scipy import ndimage

    from .perfusion_keyimage import key_frames
    from .preprocess import normalise_volume

    acquired_mm = rng.uniform(1.4, 3.6)
    size = int(round(fov_mm / acquired_mm))
    dt = rng.uniform(0.5, 1.0)
    series, lab, aif = synth_sample(image, label, spacing_rc, rng, size=size, dt=dt, vessels=vessels,
                                    pixel_mm=acquired_mm)
    peak = int(np.argmax(aif)) + int(rng.choice([-1, 0, 0, 1]))
    key = series[key_frames({"lv_peak_frame": peak}, "lv-peak", series.shape[0])].mean(0)
    zoom = acquired_mm / out_pixel_mm
    key = ndimage.zoom(key, zoom, order=1)
    lab = ndimage.zoom(lab, zoom, order=0)
    n = min(key.shape[0], lab.shape[0]), min(key.shape[1], lab.shape[1])
    key, lab = key[: n[0], : n[1]], lab[: n[0], : n[1]]
    if not (lab == LV).any():
        raise ValueError("no LV left in the key image's field")
    return normalise_volume(key[None])[0], lab.astype(np.uint8)


def _body_enhancement(t, aif, dt, myo_mbf, img, lab, body, rng):
    """(T, H, W) Gd of the tissue around the heart: chest wall, liver, vessels, fat.

    Two tissue curves (a fast one, as muscle and liver, up to the myocardium's own flow, and a
    slow one) are mixed by a smooth random field; fat next to the epicardium takes up little.
    """
    from scipy import ndimage

    h, w = img.shape
    fast = _convolve(aif, _fermi_kernel(t, np.array([myo_mbf * rng.uniform(0.2, 1.1)]), rng.uniform(1.5, 5.0), rng.uniform(0.2, 0.8)), dt)[0]
    slow = _convolve(aif, _fermi_kernel(t, np.array([rng.uniform(0.1, 0.6)]), 8.0, 0.3), dt)[0]
    mix = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(3, 8))
    mix = np.clip(0.5 + mix / (3 * mix.std() + 1e-6), 0, 1)
    uptake = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(2, 6))
    uptake = np.clip(1 + 0.4 * uptake / (uptake.std() + 1e-6), 0.2, 2.0)
    # cine-bright tissue outside the heart is mostly fat: little Gd
    fat = np.clip((img - 0.45) / 0.3, 0, 1) * rng.uniform(0.3, 0.9)
    if rng.random() < 0.6:  # epicardial fat band around the ventricles
        heart = (lab == MYO) | (lab == RV)
        band = ndimage.binary_dilation(heart, iterations=int(rng.integers(1, 4))) & ~heart
        fat = np.maximum(fat, band * rng.uniform(0.5, 0.95))
    per_pixel = uptake * (1 - fat) * body
    return (mix[None] * fast[:, None, None] + (1 - mix[None]) * slow[:, None, None]) * per_pixel[None]


def _paint_vessels(conc, img, lab, t, aif, rv, pixel_mm, rng):
    """Great vessels cut by the slice, in place in ``conc`` (T, H, W), labelled background.

    A real short-axis perfusion slice holds bright round vessels besides the ventricles: the
    descending aorta behind the heart (LV blood a fraction of a second later) and the pulmonary
    artery or a vena cava (RV-like timing). ACDC's labels have none of them and the body's
    synthetic uptake is tissue-like, so a network trained without them takes a bright disc near
    the heart for more heart, and the bolus finder took the aorta for the LV (16 synthetic
    full-FOV series, ``tools/compare_perfusion_segmenters.py --vessels 1.0``: Dice LV / MYO
    0.989 / 0.875 -> 0.928 / 0.820 before the finder learnt of them). One or two discs or
    ellipses of 16-30 mm, 15-55 mm outside the heart.
    """
    from scipy import ndimage

    h, w = lab.shape
    lv = lab == LV
    if not lv.any():
        return
    cy, cx = np.argwhere(lv).mean(0)
    heart_radius = np.sqrt((lab > 0).sum() / np.pi)
    keep_out = ndimage.binary_dilation(lab > 0, iterations=max(1, int(round(4.0 / pixel_mm))))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    blood_level = float(np.median(img[lv]))
    for _ in range(int(rng.integers(1, 3))):
        arterial = rng.random() < 0.6
        source = aif if arterial else rv
        curve = np.interp(t - rng.uniform(0.3, 1.5) if arterial else t - rng.uniform(0.0, 1.0), t, source)
        curve = curve * rng.uniform(0.85, 1.1)
        r_major = rng.uniform(8.0, 15.0) / pixel_mm
        r_minor = r_major * rng.uniform(0.6, 1.0)     # cut obliquely
        tilt = rng.uniform(0, np.pi)
        for _try in range(30):
            angle = rng.uniform(0, 2 * np.pi)
            dist = heart_radius + rng.uniform(15.0, 55.0) / pixel_mm + r_major
            y, x = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
            dy, dx = yy - y, xx - x
            u = dy * np.cos(tilt) + dx * np.sin(tilt)
            v = -dy * np.sin(tilt) + dx * np.cos(tilt)
            disc = (u / r_major) ** 2 + (v / r_minor) ** 2 <= 1
            if disc.sum() >= 4 and not (disc & keep_out).any() and disc.sum() == np.count_nonzero(disc[1:-1, 1:-1]):
                conc[:, disc] = curve[:, None]
                img[disc] = blood_level   # its pre-contrast signal is the LV blood's, not the cine's fat or lung
                break
