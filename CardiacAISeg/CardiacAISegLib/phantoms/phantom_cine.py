"""Synthetic short-axis cine with exact truth (docs/algorithms.md section 7).

Anatomy lives in a heart frame (X = toward the RV across the septum, Y = a x X = anterior,
Z = a = apex -> base, origin at the epicardial apex); the image grid is a true short-axis
stack (slices perpendicular to Z) with a random in-plane rotation, placed obliquely in RAS
with the long axis pointing left-anterior-inferior as in patients, so orientation is real.

- LV cavity: ellipsoid (semi-axes A, B in plane, C along Z) truncated at the base plane,
  ``h`` above its centre: V = pi A B [(h + C) - (h^3 + C^3) / (3 C^2)]. A, B scale by lam,
  C and h by sqrt(lam), so V ~ lam^2.5 follows the volume curve (ES at ~35 % of RR);
  the epicardial apex stays put and the base descends in systole.
- Myocardium: the epicardium is the cavity ellipsoid grown by w (same base plane); w is
  solved each frame so the myocardial volume is constant (incompressible).
- RV: blood-pool crescent on the epicardium over a known arc (default 120 degrees centred
  on X), so the insertion points are the epicardial points at the arc ends.
- Papillary muscles are dark blobs labelled as LV blood pool (ACDC convention), epicardial
  fat is bright and unlabelled, so labels and analytic volumes stay exact.
- Image: bSSFP-like intensities, slight blur, coil shading, Rician noise.

Labels are sampled at voxel centres, so ``voxel_*_ml`` truth is what any pipeline given the
true masks must reproduce exactly; ``disc_sum_lv_ml`` is the analytic cross-sections times
the slice spacing; ``analytic_lv_ml`` the closed form.
"""
import numpy as np
from scipy import ndimage, optimize

from ..labels import LV, MYO, RV
from ..study import CINE, Study

_INTENSITY = {"air": 0.0, "tissue": 0.32, "lung": 0.06, "blood": 1.0, "myo": 0.28, "fat": 0.85}


def truncated_ellipsoid_ml(A, B, C, h):
    """Volume (mL) of an ellipsoid (semi-axes A, B, C mm) from its apex (-C) to the plane z = h."""
    h = min(h, C)
    return np.pi * A * B * ((h + C) - (h ** 3 + C ** 3) / (3 * C ** 2)) / 1000.0


def _volume_curve(n_frames, es_frame):
    """g(t) in [0, 1]: 1 at ED (frame 0), 0 at ES, rapid filling, diastasis, atrial kick."""
    tau = np.arange(n_frames) / n_frames
    tes = es_frame / n_frames
    g = np.empty(n_frames)
    sys_ = tau <= tes
    g[sys_] = 0.5 * (1 + np.cos(np.pi * tau[sys_] / tes))
    u = (tau[~sys_] - tes) / (1 - tes)
    early = 0.8 * (1 - np.exp(-u / 0.12)) / (1 - np.exp(-1 / 0.12))
    kick = 0.2 * np.clip((u - 0.75) / 0.25, 0, 1) ** 2
    g[~sys_] = early + kick
    return g


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _ellipse_radius(theta, A, B, alpha):
    return 1.0 / np.sqrt((np.cos(theta - alpha) / A) ** 2 + (np.sin(theta - alpha) / B) ** 2)


def make_cine_phantom(seed=0, n_frames=20, n_slices=10, size=128, pixel_mm=None, slice_mm=None,
                      rotation=None, septal_arc_deg=120.0, septal_offset_deg=0.0,
                      slice_direction=None, mirrored=False, noise=None):
    """(Study, truth) for a synthetic short-axis cine; see the module docstring.

    ``pixel_mm`` defaults to U(1.2, 1.8), ``slice_mm`` (spacing) to U(8, 10), ``rotation``
    (in-plane, degrees) to U(0, 360). ``septal_arc_deg`` / ``septal_offset_deg`` set the RV
    contact arc (offset rotates it toward anterior). ``slice_direction`` +1 = k runs apex
    -> base, -1 = base -> apex (random by default). ``mirrored`` flips the row axis so
    e_i x e_j points to the apex instead of the base.

    truth: analytic_lv_ml, disc_sum_lv_ml, voxel_lv_ml, voxel_myo_ml, voxel_rv_ml (per frame
    lists), ed_frame, es_frame, insertion_points (ED: list of {slice, anterior_ras,
    inferior_ras, centre_ras}), septal_arc_deg, apex_to_base (RAS unit vector).
    """
    rng = np.random.default_rng(seed)
    # Draw every random setting even when it is given, so a seed keeps its anatomy when
    # only the pixel size or the rotation is overridden.
    draws = rng.uniform(1.2, 1.8), rng.uniform(8.0, 10.0), rng.uniform(0, 360), rng.random(), rng.uniform(0.03, 0.05)
    px = float(pixel_mm) if pixel_mm is not None else draws[0]
    dz = float(slice_mm) if slice_mm is not None else draws[1]
    psi = np.radians(rotation if rotation is not None else draws[2])
    kdir = slice_direction if slice_direction is not None else (1 if draws[3] < 0.5 else -1)
    noise = float(noise) if noise is not None else draws[4]

    # --- heart frame in RAS: long axis left-anterior-inferior, RV to the right-anterior ---
    base_to_apex = _unit(np.array([-0.55, 0.5, -0.67]) + rng.normal(0, 0.06, 3))
    Z = -base_to_apex
    X = np.array([1.0, 0.35, 0.0])
    X = _unit(X - X.dot(Z) * Z)
    Y = np.cross(Z, X)                          # anterior = a x s
    O = np.array([0.0, -20.0, 10.0]) + rng.normal(0, 10, 3)   # epicardial apex (RAS mm)

    # --- ED geometry (mm) and the volume curve ---
    A0 = rng.uniform(24, 28)
    B0 = A0 * rng.uniform(0.88, 1.0)
    C0 = rng.uniform(55, 65)
    h0 = C0 * rng.uniform(0.35, 0.5)
    alpha = rng.uniform(0, np.pi)               # in-plane orientation of the ellipse axes
    w0 = rng.uniform(8, 10)
    edv = truncated_ellipsoid_ml(A0, B0, C0, h0)
    myo_ml = truncated_ellipsoid_ml(A0 + w0, B0 + w0, C0 + w0, h0) - edv
    esv = edv * rng.uniform(0.35, 0.45)
    es_frame = max(1, int(round(0.35 * n_frames))) if n_frames > 1 else 0
    g = _volume_curve(n_frames, es_frame) if n_frames > 1 else np.ones(1)
    target = esv + (edv - esv) * g

    frames = []
    for t in range(n_frames):
        lam = (target[t] / edv) ** 0.4
        A, B, C, h = A0 * lam, B0 * lam, C0 * np.sqrt(lam), h0 * np.sqrt(lam)
        cav = truncated_ellipsoid_ml(A, B, C, h)
        w = optimize.brentq(lambda w: truncated_ellipsoid_ml(A + w, B + w, C + w, h) - cav - myo_ml, 0.0, 60.0, xtol=1e-10)
        frames.append({"A": A, "B": B, "C": C, "h": h, "w": w, "zc": C + w, "cav_ml": cav,
                       "rv_scale": 0.55 + 0.45 * g[t]})

    # --- slice stack: from just below the ED base toward the apex ---
    ed = frames[0]
    z_base = ed["zc"] + ed["h"]
    z_top = z_base - rng.uniform(0.3, 0.7) * dz
    z_of_k = z_top - dz * (np.arange(n_slices) if kdir < 0 else (n_slices - 1 - np.arange(n_slices)))
    ei = np.cos(psi) * X + np.sin(psi) * Y
    ej = np.cross(Z, ei) * (-1 if mirrored else 1)
    ek = Z * kdir
    shift = -14.0 * X + rng.normal(0, 6, 2) @ np.array([X, Y])   # centre the LV+RV pair in the FOV
    centre_px = (size - 1) / 2.0
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2] = ei * px, ej * px, ek * dz
    M[:3, 3] = O + Z * z_of_k[0] - centre_px * px * (ei + ej) - shift

    jj, ii = np.mgrid[0:size, 0:size].astype(float)
    # In-plane heart coordinates of each pixel (same for every slice of this true SAX stack).
    q = ((ii[..., None] - centre_px) * px * ei + (jj[..., None] - centre_px) * px * ej) - shift
    x, y = q @ X, q @ Y
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    half = np.radians(septal_arc_deg) / 2
    th_inf, th_ant = np.radians(septal_offset_deg) - half, np.radians(septal_offset_deg) + half
    arc_pos = np.mod(theta - th_inf, 2 * np.pi)             # 0 at the inferior insertion
    arc_len = th_ant - th_inf
    in_arc = arc_pos <= arc_len
    crescent = np.where(in_arc, np.sin(np.pi * np.clip(arc_pos / arc_len, 0, 1)) ** 0.35, 0.0)
    z_rv_apex = 0.35 * (ed["zc"] + ed["h"])
    rv_T0 = rng.uniform(20, 26)

    pap_angles = np.radians(septal_offset_deg) + np.pi + np.radians([-55.0, 60.0])
    coil = O + Y * 120 + rng.normal(0, 20, 3)               # anterior surface coil
    shading = _coil_shading((n_slices, size, size), M, coil)
    labels, images = {}, np.zeros((n_frames, n_slices, size, size), np.float32)
    truth = {"analytic_lv_ml": [], "disc_sum_lv_ml": [], "voxel_lv_ml": [], "voxel_myo_ml": [],
             "voxel_rv_ml": [], "ed_frame": 0, "es_frame": es_frame, "insertion_points": [],
             "septal_arc_deg": float(septal_arc_deg), "apex_to_base": tuple(Z), "wall_mm": []}
    vox_ml = abs(np.linalg.det(M[:3, :3])) / 1000.0
    for t, f in enumerate(frames):
        lab = np.zeros((n_slices, size, size), np.uint8)
        img = np.zeros((n_slices, size, size))
        disc = 0.0
        for k in range(n_slices):
            z = z_of_k[k]
            zeta = z - f["zc"]
            tissue = np.full((size, size), _INTENSITY["tissue"])
            body = (x / 150.0) ** 2 + ((y + 30) / 110.0) ** 2 <= 1
            lung = ((x + 75) / 45.0) ** 2 + ((y - 5) / 70.0) ** 2 <= 1
            tissue[lung] = _INTENSITY["lung"]
            tissue[~body] = _INTENSITY["air"]
            if zeta > f["h"]:                       # above the base: atrium / great vessels, unlabelled
                img[k] = tissue
                continue
            Ce = f["C"] + f["w"]
            se = 1 - (zeta / Ce) ** 2
            epi = np.zeros((size, size), bool)
            if se > 0:
                Ae, Be = (f["A"] + f["w"]) * np.sqrt(se), (f["B"] + f["w"]) * np.sqrt(se)
                re = _ellipse_radius(theta, Ae, Be, alpha)
                epi = r <= re
            sc = 1 - (zeta / f["C"]) ** 2
            cav = np.zeros((size, size), bool)
            if sc > 0:
                Ac, Bc = f["A"] * np.sqrt(sc), f["B"] * np.sqrt(sc)
                cav = r <= _ellipse_radius(theta, Ac, Bc, alpha)
                disc += np.pi * Ac * Bc * dz / 1000.0
            rv = np.zeros((size, size), bool)
            frac = np.clip((z - z_rv_apex) / (z_base - z_rv_apex), 0, 1)
            # Blunt RV apex: a crescent thinner than a pixel would lose its tips to voxelisation
            # and move the insertion points away from their analytic place.
            rv_T = rv_T0 * f["rv_scale"] * (0.3 + 0.7 * np.sqrt(frac)) if frac > 0 else 0.0
            if se > 0 and rv_T > 0:
                rv = (~epi) & in_arc & (r <= re + rv_T * crescent)
            lab[k][epi] = MYO
            lab[k][cav] = LV
            lab[k][rv] = RV
            # --- intensities ---
            im = tissue.copy()
            if se > 0:
                fat = (~epi) & (~rv) & (r <= re + 3.0) & (np.cos(theta - np.radians(septal_offset_deg)) < 0.2)
                im[fat] = _INTENSITY["fat"]
                rv_wall = (~epi) & (~rv) & (r <= re + rv_T * crescent + 3.0) & in_arc & (rv_T > 0)
                im[rv_wall] = _INTENSITY["myo"]
                im[epi] = _INTENSITY["myo"]
                im[rv] = _INTENSITY["blood"]
            if sc > 0:
                im[cav] = _INTENSITY["blood"]
                pap_r = 3.5 * np.sqrt(sc)
                for pa in pap_angles:
                    rc = 0.7 * _ellipse_radius(pa, Ac, Bc, alpha)
                    pap = cav & (np.hypot(x - rc * np.cos(pa), y - rc * np.sin(pa)) <= pap_r)
                    im[pap] = _INTENSITY["myo"]
            img[k] = im
            if t == 0 and se > 0 and sc > 0 and rv.any():
                def ras(th):
                    rad = _ellipse_radius(th, Ae, Be, alpha)
                    return tuple(O + X * rad * np.cos(th) + Y * rad * np.sin(th) + Z * z)
                truth["insertion_points"].append({"slice": k, "anterior_ras": ras(th_ant),
                                                  "inferior_ras": ras(th_inf), "centre_ras": tuple(O + Z * z)})
        labels[t] = lab
        truth["analytic_lv_ml"].append(f["cav_ml"])
        truth["disc_sum_lv_ml"].append(disc)
        truth["wall_mm"].append(f["w"])
        for key, v in (("voxel_lv_ml", LV), ("voxel_myo_ml", MYO), ("voxel_rv_ml", RV)):
            truth[key].append(int((lab == v).sum()) * vox_ml)
        images[t] = _acquire(img, shading, noise, rng)

    study = Study(images=images, ijk_to_ras=M, kind=CINE, frame_times_s=np.arange(n_frames) * (0.9 / n_frames),
                  name=f"cine_phantom_{seed}", source=f"cine_phantom(seed={seed})",
                  provenance={"reader": "phantom_cine", "seed": seed}, labels=labels, orientation_known=True)
    return study, truth


def _coil_shading(shape, M, coil):
    """Smooth receive sensitivity of one anterior surface coil: bright near it, 0.45 far away."""
    S, R, C = shape
    kk, jj, ii = np.meshgrid(np.arange(S), np.arange(R), np.arange(C), indexing="ij")
    ras = np.stack([ii, jj, kk], -1) @ M[:3, :3].T + M[:3, 3]
    dist = np.linalg.norm(ras - coil, axis=-1)
    return 0.45 + 0.9 * np.exp(-(dist / 160.0) ** 2)


def _acquire(img, shading, noise, rng):
    """Blur (finite resolution), apply the coil shading, add Rician noise."""
    out = ndimage.gaussian_filter(img, sigma=(0, 0.6, 0.6)) * shading
    n1 = rng.normal(0, noise, out.shape)
    n2 = rng.normal(0, noise, out.shape)
    return np.sqrt((out + n1) ** 2 + n2 ** 2).astype(np.float32)
