"""Synthetic first-pass perfusion with exact truth (docs/algorithms.md sections 3, 5 and 7).

Three short-axis slices: **slice k = 0 is basal, 1 mid, 2 apical** (k grows base -> apex).
Anatomy lives in a heart frame: a = apex -> base (long axis), s = unit vector from the LV
centre across the septum toward the RV, u_ant = a x s = anterior. In RAS the long axis points
left-anterior-inferior and the RV sits right-anterior, as in patients, and the image plane
carries a random in-plane rotation, so ``ijk_to_ras`` is a real oblique orientation.

In-plane angle phi = atan2(d . s, d . u_ant) for a displacement d from the LV centre: 0 is
anterior, 90 septal, 180 inferior, 270 lateral, so phi grows anterior -> septal -> inferior
-> lateral. The RV crescent touches the epicardium exactly over phi in [90 - arc/2,
90 + arc/2], so the insertion points are known: anterior at 90 - arc/2, inferior at
90 + arc/2 (on the epicardial circle). Sector angle theta = phi - phi_anterior_insertion;
basal/mid: six 60 degree sectors from theta = 0 (anteroseptal 2|8, inferoseptal 3|9,
inferior, inferolateral, anterolateral, anterior 1|7 = [300, 360)); apical: four 90 degree
sectors centred on the septum (the arc bisector, theta = arc/2): septal 14, inferior 15,
lateral 16, anterior 13.

Curves (mmol/L): AIF = gamma-variate first pass + recirculation + plateau; RV the same
shape 3-4.5 s earlier; myocardium = AIF (x) Fermi response (normalised form, R(0) = F) with
F = MBF * density / 60 per AHA segment, or the 2CXM (model mismatch). Convolutions are done
on a 20x finer time grid from the analytic AIF, so the fit's discretisation is tested too.
"""
import numpy as np

from ..aha import AHA_SEGMENTS, segments_in_territory
from ..labels import LV, MYO, RV
from ..perfusion.mbf import DENSITY, fermi
from ..perfusion.mbf_2cxm import two_cx_response
from ..study import PERFUSION, Study

__all__ = ["make_perfusion_phantom", "perfusion_aif"]

LEVELS = ("basal", "mid", "apical")
# (endocardial, epicardial) radius in mm per level, before a small random jitter.
_RADII_MM = {"basal": (23.0, 32.0), "mid": (20.0, 29.0), "apical": (13.0, 21.0)}
_FINE = 20          # sub-steps per frame for the convolutions


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _gamma(t, t0, tp, alpha):
    """Gamma variate with foot t0, peak 1 at t0 + tp."""
    x = np.clip((t - t0) / tp, 0.0, None)
    return np.where(x > 0, x ** alpha * np.exp(alpha * (1.0 - x)), 0.0)


def perfusion_aif(t, foot_s, peak_mmol, rise_s, recirc=0.15, plateau=0.1):
    """Analytic AIF at times t (s): first pass, recirculation ~8 s later, slow plateau."""
    first = _gamma(t, foot_s, rise_s, 3.0)
    second = recirc * _gamma(t, foot_s + rise_s + 6.0, 2.2 * rise_s, 3.0)
    level = plateau / (1.0 + np.exp(-(t - (foot_s + 2.5 * rise_s)) / 1.5))
    return peak_mmol * (first + second + level)


def _convolve_fine(c_fine, h_fine, dt_fine):
    """Trapezoid-rule convolution on the fine grid (both curves start at t = 0)."""
    full = np.convolve(c_fine, h_fine)[: c_fine.size] * dt_fine
    return full - 0.5 * dt_fine * (c_fine[0] * h_fine + c_fine * h_fine[0])


def _fine_lags(delay_s, delay_frames, dt):
    """{segment id: tissue delay in fine-grid steps} from ``delay_s`` (s, one or per segment)
    or, if None, the whole ``delay_frames``."""
    if delay_s is None:
        return {r["id"]: int(delay_frames) * _FINE for r in AHA_SEGMENTS}
    if np.isscalar(delay_s):
        delay_s = {r["id"]: delay_s for r in AHA_SEGMENTS}
    missing = [r["id"] for r in AHA_SEGMENTS if r["id"] not in delay_s]
    if missing:
        raise ValueError(f"delay_s lacks segments {missing}")
    return {int(k): int(round(float(v) / dt * _FINE)) for k, v in delay_s.items()}


def _delay_truth(lags, delay_s, delay_frames, dt):
    per_segment = {sid: lag * dt / _FINE for sid, lag in lags.items()}
    uniform = len(set(lags.values())) == 1
    if delay_s is None:
        frames = int(delay_frames)
    else:
        frames = next(iter(lags.values())) / _FINE if uniform else None
    return {"delay_s_per_segment": per_segment, "delay_frames": frames,
            "delay_s": next(iter(per_segment.values())) if uniform else None}


def _segment_values(rng, stress, mbf_per_segment, ischaemic_territory):
    if mbf_per_segment is not None:
        values = {int(k): float(v) for k, v in mbf_per_segment.items()}
        missing = [r["id"] for r in AHA_SEGMENTS if r["id"] not in values]
        if missing:
            raise ValueError(f"mbf_per_segment lacks segments {missing}")
        return values
    centre = rng.uniform(2.4, 3.0) if stress else rng.uniform(0.8, 1.05)
    spread = 0.25 if stress else 0.1
    values = {r["id"]: float(centre + rng.uniform(-spread, spread)) for r in AHA_SEGMENTS}
    if ischaemic_territory is not None:
        for sid in segments_in_territory(ischaemic_territory):
            # Stress flow in a stenosed territory barely rises above rest.
            values[sid] = float(rng.uniform(1.0, 1.4) if stress else values[sid] * 0.9)
    return values


def _geometry(rng, size, pixel_mm, slice_mm):
    """Heart frame (a, s, u_ant) and an oblique short-axis ijk_to_ras (k: base -> apex)."""
    a = -_unit(np.array([-0.6, 0.55, -0.5]) + rng.normal(0, 0.05, 3))   # apex -> base
    s = np.array([1.0, 0.3, 0.0])                                       # toward the RV
    s = _unit(s - s.dot(a) * a)
    u_ant = np.cross(a, s)
    psi = rng.uniform(0, 2 * np.pi)                                     # in-plane rotation
    e_i = np.cos(psi) * s + np.sin(psi) * u_ant
    e_k = -a
    e_j = np.cross(e_k, e_i)
    centre_px = np.array([(size - 1) / 2.0, (size - 1) / 2.0]) + rng.uniform(-3, 3, 2)
    centre_ras = np.array([-15.0, 5.0, 20.0]) + rng.normal(0, 5, 3)    # basal LV centre
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = e_i * pixel_mm, e_j * pixel_mm, e_k * slice_mm
    m[:3, 3] = centre_ras - m[:3, 0] * centre_px[0] - m[:3, 1] * centre_px[1]
    return a, s, u_ant, e_i, e_j, centre_px, m


def make_perfusion_phantom(seed=0, n_slices=3, size=96, pixel_mm=1.8, dt=0.5, n_frames=60,
                           stress=True, mbf_per_segment=None, ischaemic_territory=None,
                           noise=0.02, model="fermi", motion=False, delay_frames=1,
                           septal_arc_deg=120.0, hematocrit=0.42, density=DENSITY,
                           slice_mm=20.0, delay_s=None):
    """(Study, truth) for a 3-slice first-pass perfusion series with known MBF per AHA segment.

    Slice 0 is basal, 1 mid, 2 apical (``n_slices`` must be 3: one per AHA level).
    ``mbf_per_segment`` {id: mL/min/g} overrides the random values (stress 2.15-3.25, rest
    0.7-1.15; an ``ischaemic_territory`` "LAD"/"RCA"/"LCx" gets 1.0-1.4 at stress).
    ``model`` 'fermi' or '2cxm' (then MBF is blood flow, Fp = MBF (1 - Hct)). ``noise`` is
    the Gaussian SD (mmol/L) of the images; the AIF, from a separate low-resolution read-out
    in practice, gets a quarter of it. ``motion`` adds rigid in-plane breathing shifts
    (labels stay those of frame 0). Tissue lags the AIF by ``delay_frames``, or by ``delay_s``
    seconds if given: one value, or {segment id: seconds} per AHA segment; sub-frame and
    negative delays are exact to 1/20 of a frame (the fine grid; truth holds the delays used).

    Study: kind 'perfusion', images (T, 3, size, size) in Gd mmol/L, aif (T,),
    frame_times_s, labels {0: (3, size, size) uint8: 1 LV blood, 2 myocardium, 3 RV}.
    truth: mbf_per_segment, segment_map (3, size, size) AHA id per myocardial pixel, 0
    elsewhere), insertion_points [(anterior_ijk, inferior_ijk)] per slice (continuous
    (i, j, k) on the epicardium), density, plus levels, delay_frames, model parameters,
    lv_centre_ijk, apex_to_base, anterior, septal (RAS unit vectors), motion_shift_px,
    delay_s_per_segment {id: seconds}; delay_s and delay_frames are None when segments differ.
    """
    if n_slices != 3:
        raise ValueError("the perfusion phantom has exactly 3 slices (basal, mid, apical)")
    if model not in ("fermi", "2cxm"):
        raise ValueError(f"model must be 'fermi' or '2cxm', got {model!r}")
    rng = np.random.default_rng(seed)
    mbf_seg = _segment_values(rng, stress, mbf_per_segment, ischaemic_territory)
    lags = _fine_lags(delay_s, delay_frames, dt)
    a, s, u_ant, e_i, e_j, centre_px, ijk_to_ras = _geometry(rng, size, pixel_mm, slice_mm)

    # --- curves on a fine grid, then sampled at the frame times -----------------------
    t = np.arange(n_frames) * dt
    dt_f = dt / _FINE
    n_fine = n_frames * _FINE
    # A negative delay reads the tissue curve past the series end: compute that far.
    ahead = max(0, -min(lags.values()))
    t_f = np.arange(n_fine + ahead) * dt_f
    foot = rng.uniform(6.0, 8.0)
    rise = rng.uniform(2.5, 4.0)
    peak = rng.uniform(3.0, 5.5)
    aif_f = perfusion_aif(t_f, foot, peak, rise)
    rv_lead = rng.uniform(3.0, 4.5)
    rv_f = perfusion_aif(t_f, foot - rv_lead, 1.25 * peak, 0.8 * rise)
    curves, params = {}, {}
    for sid, value in mbf_seg.items():
        if model == "fermi":
            # Faster flow, shorter capillary transit: tau0 shrinks at stress.
            tau0 = rng.uniform(1.0, 2.0) if stress else rng.uniform(2.0, 3.5)
            k = rng.uniform(0.6, 1.2)
            h = value * density / 60.0 * fermi(t_f, tau0, np.log(k))[0]
            params[sid] = {"F": value * density / 60.0, "tau0": tau0, "k": k}
        else:
            fp = value * density / 60.0 * (1.0 - hematocrit)
            ps = (rng.uniform(1.0, 1.5) if not stress else rng.uniform(1.5, 2.5)) * density / 60.0
            vp, ve = rng.uniform(0.08, 0.12), rng.uniform(0.18, 0.25)
            amps, rates = two_cx_response(fp, ps, vp, ve)
            h = (amps[:, None] * np.exp(rates[:, None] * t_f)).sum(0) / (1.0 - hematocrit)
            params[sid] = {"Fp": fp, "PS": ps, "vp": vp, "ve": ve}
        y = _convolve_fine(aif_f, h, dt_f)
        lag = lags[sid]
        delayed = np.r_[np.zeros(lag), y[: n_fine - lag]] if lag >= 0 else y[-lag: n_fine - lag]
        curves[sid] = delayed[::_FINE]
    muscle = _convolve_fine(aif_f, 0.3 * density / 60.0 * fermi(t_f, 6.0, 0.0)[0], dt_f)[:n_fine:_FINE]
    aif, rv_curve = aif_f[:n_fine:_FINE], rv_f[:n_fine:_FINE]

    # --- anatomy: per slice polar coordinates in the heart frame ----------------------
    jj, ii = np.mgrid[0:size, 0:size].astype(float)
    di, dj = (ii - centre_px[0]) * pixel_mm, (jj - centre_px[1]) * pixel_mm
    # d = di e_i + dj e_j; components along u_ant and s give the anatomical angle.
    along_ant = di * e_i.dot(u_ant) + dj * e_j.dot(u_ant)
    along_s = di * e_i.dot(s) + dj * e_j.dot(s)
    r = np.hypot(along_ant, along_s)
    phi = np.degrees(np.arctan2(along_s, along_ant)) % 360.0
    phi_ant, phi_inf = 90.0 - septal_arc_deg / 2.0, 90.0 + septal_arc_deg / 2.0
    theta = (phi - phi_ant) % 360.0

    labels = np.zeros((3, size, size), np.uint8)
    seg_map = np.zeros((3, size, size), np.int16)
    body = ((di / 75.0) ** 2 + (dj / 65.0) ** 2) <= 1.0
    insertion, centres = [], []
    for k, level in enumerate(LEVELS):
        r_endo, r_epi = np.array(_RADII_MM[level]) + rng.uniform(-1.0, 1.0)
        width = rng.uniform(13.0, 17.0) * (0.7 if level == "apical" else 1.0)
        in_arc = (phi > phi_ant) & (phi < phi_inf)
        crescent = np.sin(np.pi * np.clip((phi - phi_ant) / septal_arc_deg, 0, 1)) ** 0.6
        labels[k][(r > r_epi) & in_arc & (r <= r_epi + width * crescent)] = RV
        labels[k][r <= r_epi] = MYO
        labels[k][r <= r_endo] = LV
        myo = labels[k] == MYO
        if level == "apical":
            sector = ((theta - septal_arc_deg / 2.0 + 45.0) % 360.0 // 90.0).astype(int)
            ids = np.array([14, 15, 16, 13])[np.minimum(sector, 3)]
        else:
            sector = (theta // 60.0).astype(int)
            ids = np.array([2, 3, 4, 5, 6, 1])[np.minimum(sector, 5)] + (6 if level == "mid" else 0)
        seg_map[k][myo] = ids[myo]
        ends = []
        for ang in (phi_ant, phi_inf):
            v = np.cos(np.radians(ang)) * u_ant + np.sin(np.radians(ang)) * s
            ends.append((centre_px[0] + r_epi * v.dot(e_i) / pixel_mm,
                         centre_px[1] + r_epi * v.dot(e_j) / pixel_mm, float(k)))
        insertion.append(tuple(ends))
        centres.append((float(centre_px[0]), float(centre_px[1]), float(k)))

    # --- images ------------------------------------------------------------------------
    images = np.zeros((n_frames, 3, size, size), np.float64)
    images[:, :, body] = muscle[:, None, None]
    for k in range(3):
        images[:, k][:, labels[k] == LV] = aif[:, None]
        images[:, k][:, labels[k] == RV] = rv_curve[:, None]
    for sid, curve in curves.items():
        sel = seg_map == sid
        images[:, sel] = curve[:, None]
    shifts = np.zeros((n_frames, 2))
    if motion:
        from scipy import ndimage
        phase = rng.uniform(0, 2 * np.pi)
        shifts[:, 1] = 3.0 / pixel_mm * np.sin(2 * np.pi * t / 4.5 + phase) - 3.0 / pixel_mm * np.sin(phase)
        shifts[:, 0] = 0.3 * shifts[:, 1]
        for n in range(n_frames):
            for k in range(3):
                images[n, k] = ndimage.shift(images[n, k], (shifts[n, 1], shifts[n, 0]), order=1)
    images += rng.normal(0.0, noise, images.shape)
    aif_meas = aif + rng.normal(0.0, noise / 4.0, aif.shape)

    study = Study(images=images.astype(np.float32), ijk_to_ras=ijk_to_ras, kind=PERFUSION,
                  frame_times_s=t, name="perfusion phantom (stress)" if stress else "perfusion phantom (rest)",
                  source="phantom:perfusion", labels={0: labels}, aif=aif_meas, units="gd_mmol_l",
                  hematocrit=hematocrit, orientation_known=True,
                  provenance={"generator": "phantom_perfusion", "seed": seed, "model": model,
                              "stress": stress, "noise": noise, "motion": motion})
    truth = {
        "mbf_per_segment": mbf_seg, "segment_map": seg_map, "insertion_points": insertion,
        "density": density, "levels": list(LEVELS), **_delay_truth(lags, delay_s, delay_frames, dt),
        "model": model, "model_params": params, "hematocrit": hematocrit,
        "septal_arc_deg": septal_arc_deg, "lv_centre_ijk": centres,
        "apex_to_base": a, "anterior": u_ant, "septal": s,
        "aif_foot_s": foot, "aif_rise_s": rise, "aif_peak_mmol": peak, "rv_lead_s": rv_lead,
        "aif_true": aif, "motion_shift_px": shifts,
    }
    return study, truth
