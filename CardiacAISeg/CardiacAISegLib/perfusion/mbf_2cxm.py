"""Two-compartment exchange model (2CXM): a cross-check of the Fermi MBF (docs/algorithms.md §5).

Plasma (v_p) and interstitium (v_e) exchange with PS; plasma flow F_p brings the arterial
plasma concentration C_b / (1 - Hct). The impulse response is two exponentials, so the
convolution with a piecewise-linear AIF is exact (an IIR filter), and one ROI curve is fitted
with scipy's bounded least squares.
"""
import numpy as np

from ..errors import CardiacInputError
from .mbf import DENSITY


def two_cx_response(fp, ps, vp, ve):
    """2CXM tissue impulse response to a *plasma* input: Fp (A e^(l1 t) + (1-A) e^(l2 t)).

    From v_p C_p' = F_p (C_a - C_p) - PS (C_p - C_e), v_e C_e' = PS (C_p - C_e),
    y = v_p C_p + v_e C_e; rates in /s. Returns (amplitudes (2,), rates (2,)) so callers
    can convolve exactly; h(t) = sum(amps * exp(rates * t)).
    """
    tr = -(fp + ps) / vp - ps / ve
    det = fp * ps / (vp * ve)
    disc = np.sqrt(max(tr * tr - 4.0 * det, 0.0))
    l1, l2 = (tr + disc) / 2.0, (tr - disc) / 2.0
    # h(0) = Fp and h'(0) = -Fp^2 / vp fix the split between the two exponentials.
    frac = (-fp / vp - l2) / (l1 - l2) if l1 != l2 else 1.0
    return fp * np.array([frac, 1.0 - frac]), np.array([l1, l2])


def exp_convolve(c, dt, rate):
    """Exact integral_0^t c(tau) e^(rate (t - tau)) dtau on the frame grid, c piecewise linear.

    The recursion E[n+1] = q E[n] + a0 c[n] + a1 c[n+1] is an IIR filter, so lfilter does it.
    """
    from scipy.signal import lfilter
    c = np.asarray(c, dtype=np.float64)
    x = -rate * dt
    if x < 1e-6:
        q, a0, a1 = 1.0 - x, dt / 2.0, dt / 2.0
    else:
        q = np.exp(-x)
        whole = dt * (1.0 - q) / x                      # integral of e^{rate (dt - s)}
        a1 = dt * (1.0 / x - (1.0 - q) / x ** 2)        # ... weighted by s / dt
        a0 = whole - a1
    out = lfilter([a1, a0], [1.0, -q], c)
    return out - a1 * c[0] * q ** np.arange(c.size)    # the filter's start is not E[0] = 0


def two_cx_curve(aif, dt, fp, ps, vp, ve, hematocrit, delay_frames=0):
    """Tissue curve of the 2CXM for a blood AIF (plasma input = AIF / (1 - Hct))."""
    plasma = np.asarray(aif, dtype=np.float64) / (1.0 - hematocrit)
    amps, rates = two_cx_response(fp, ps, vp, ve)
    y = sum(a * exp_convolve(plasma, dt, r) for a, r in zip(amps, rates))
    if delay_frames:
        y = np.r_[np.zeros(delay_frames), y[:-delay_frames]]
    return y


def fit_2cxm(tissue_mean_curve, aif, dt, hematocrit=0.42, density=DENSITY, delays=range(0, 7),
             foot=None, window=None):
    """Two-compartment exchange fit of one ROI curve (a cross-check of the Fermi MBF).

    Same baseline as ``fermi_deconvolution``, whole-frame delays ``delays`` (frames, >= 0)
    and, by default, every frame from 3 before the foot; bounded least squares from a few
    starts per delay. Returns Fp and PS in mL/min/g, vp and ve (mL/mL), Fb = Fp / (1 - Hct)
    in mL/min/g (blood flow, the quantity the Fermi MBF estimates), the delay, rmse, r2,
    and the fit's trust flags: ``bounds_hit`` (names of the parameters on a bound, e.g.
    'vp' at 0.01 or 'Fp' at 0.3 /s: the fit ran out of room, so its Fb is not a measurement),
    ``at_bound`` (any), and ``at_delay_edge`` (the best delay is the longest searched).
    """
    from scipy.optimize import least_squares

    from .mbf import _check_aif, _check_tissue, find_foot, subtract_baseline
    y_all = _check_tissue(tissue_mean_curve, "ROI curve")
    if y_all.shape[0] != 1:
        raise CardiacInputError("ROI curve", "fit_2cxm takes one mean curve (frames,)")
    aif = _check_aif(aif, dt, y_all.shape[1])
    if not 0.0 <= hematocrit < 1.0:
        raise CardiacInputError("hematocrit", f"hematocrit must be in [0, 1), got {hematocrit}")
    foot = find_foot(aif) if foot is None else int(foot)
    # Unlike the Fermi form, the 2CXM has an extravascular compartment that holds contrast
    # after the first pass, so the whole series helps it: with the first pass alone vp
    # and Fp trade off (vp collapses to its bound on the QPerf examples).
    start, stop = (max(0, foot - 3), aif.size) if window is None else window
    b = subtract_baseline(aif, foot)[start:stop]
    y = subtract_baseline(y_all[0], foot)[start:stop]
    lo, hi = [1e-4, 1e-4, 0.01, 0.02], [0.3, 0.3, 0.3, 0.6]
    best = None
    for d in (d for d in delays if d < y.size):
        def residual(p):
            return two_cx_curve(b, dt, *p, hematocrit, d) - y
        for start_p in ([0.02, 0.01, 0.08, 0.2], [0.05, 0.03, 0.12, 0.3], [0.01, 0.005, 0.05, 0.15]):
            fit = least_squares(residual, start_p, bounds=(lo, hi), x_scale=[0.01, 0.01, 0.05, 0.1])
            if best is None or fit.cost < best[0].cost:
                best = (fit, d)
    fit, d = best
    fp, ps, vp, ve = fit.x
    sse = 2.0 * fit.cost
    # least_squares keeps x strictly inside its bounds: "on" a bound is within 0.1% of the range.
    tol = 1e-3 * (np.array(hi) - np.array(lo))
    hit = [name for name, x, low, high, eps in zip(("Fp", "PS", "vp", "ve"), fit.x, lo, hi, tol)
           if x <= low + eps or x >= high - eps]
    searched = [dd for dd in delays if dd < y.size]
    return {"Fp": 60 * fp / density, "PS": 60 * ps / density, "vp": vp, "ve": ve,
            "Fb": 60 * fp / (1.0 - hematocrit) / density, "delay_frames": d, "delay_s": d * dt,
            "rmse": float(np.sqrt(sse / y.size)),
            "r2": float(1.0 - sse / max(((y - y.mean()) ** 2).sum(), 1e-30)),
            "bounds_hit": hit, "at_bound": bool(hit), "at_delay_edge": bool(d == max(searched)),
            "hematocrit": hematocrit, "density": density, "window": (int(start), int(stop))}
