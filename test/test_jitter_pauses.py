"""The per-frame vs fused jitter of mspr-bag-eval counts no pair of frames across a pause."""
import math

import numpy as np
import pytest

from mspr_training.bags.fusion_compare import continuous_pairs, jitter_rms


def test_jitter_leaves_out_the_jump_to_another_walk_after_a_pause():
    """Where a walk ends and the next begins, after a pause, is a relocalization, not jitter.

    In a recording of several walks the estimate's error jumps there from one walk's to the
    other's.

    The bug guarded: two jumps of 5 m between walks made the fused stream's jitter look
    several times larger than its frame-to-frame noise (benchmarks/README.md, issue 25).
    """
    rate_ns = 100_000_000   # 10 Hz, then 1 s without frames between the walks
    stamps = np.concatenate([np.arange(5) * rate_ns, 15 * rate_ns + np.arange(5) * rate_ns])
    truth = np.zeros((10, 3))
    truth[:, 0] = np.arange(10) * 0.1
    truth[5:, 1] = 20.0              # the second walk is elsewhere
    estimate = truth + [[0.05 * (-1) ** k, 0.0, 0.0] for k in range(10)]
    estimate[5:] += [5.0, 0.0, 0.0]  # and has another error
    identity = np.tile([0.0, 0.0, 0.0, 1.0], (10, 1))
    continuous = continuous_pairs(stamps)
    assert continuous.tolist() == [True] * 4 + [False] + [True] * 4
    # Within each walk the error changes by 0.1 m every frame.
    assert jitter_rms(estimate, identity, truth, identity, continuous)[0] == pytest.approx(0.1)
    assert jitter_rms(estimate, identity, truth, identity)[0] > 1.0
    # A camera at 1 Hz has no pause in a second between frames; one frame is no pair at all.
    assert continuous_pairs(np.arange(4) * 1_000_000_000).all()
    assert continuous_pairs([7]).size == 0
    assert all(math.isnan(v) for v in jitter_rms(truth[:2], identity[:2], truth[:2],
                                                 identity[:2], [False]))
