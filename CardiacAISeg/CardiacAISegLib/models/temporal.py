"""Temporal consistency of a cine segmentation over the whole cardiac cycle.

Each frame segmented alone lets an uncertain slice, typically the basal one where the LV outflow
and the atrium meet, flip in and out of the LV between neighbouring frames: the Sunnybrook
sample's LV curve (20 frames) had a second dip at frames 13-15 and an ED that beat frame 0 by
under 2 %. The heart moves smoothly over ~30-50 ms per frame, so a pixel's class probability
should too. Each frame's probabilities are averaged with its two neighbours on the cycle
(frame 0 follows the last frame) before the argmax. The neighbours' weight is small
(``NEIGHBOUR_WEIGHT``): it decides only pixels the frame itself is unsure about, so the extremes
of the cycle (ED, ES) are not pulled towards their neighbours' volumes.
docs/algorithms.md §1d.
"""
import numpy as np

# Weight of each neighbour frame; the frame itself keeps 1 - 2 x this. A pixel with p=0.7 for
# one class in its own frame keeps that class unless both neighbours disagree with it firmly.
NEIGHBOUR_WEIGHT = 0.15
# Fewer frames than this are not a sampled cycle (an ED/ES pair, a few chosen frames).
MIN_CYCLE_FRAMES = 6


def is_whole_cycle(frames, n_frames):
    """True when ``frames`` are every frame 0..n_frames-1 of a series long enough to be a cycle."""
    return n_frames >= MIN_CYCLE_FRAMES and sorted(frames) == list(range(n_frames))


def smoothed_labels(probabilities, weight=NEIGHBOUR_WEIGHT):
    """{frame: (S, R, C) uint8} from {frame: (S, K, R, C) probabilities} of every frame of one
    cycle: the argmax of ``(1 - 2w) p_t + w p_(t-1) + w p_(t+1)``, frames cyclic."""
    frames = sorted(probabilities)
    n = len(frames)
    out = {}
    for i, t in enumerate(frames):
        before, after = probabilities[frames[(i - 1) % n]], probabilities[frames[(i + 1) % n]]
        mix = (1 - 2 * weight) * probabilities[t].astype(np.float32)
        mix += weight * before.astype(np.float32)
        mix += weight * after.astype(np.float32)
        out[t] = mix.argmax(1).astype(np.uint8)
    return out
