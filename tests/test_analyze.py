"""Band similarity analysis: CKA properties, the DC trap and the permutation control."""

import numpy as np
import pytest

from fdkd.pipeline.analyze import bands, linear_cka, mean_cosine, similarity


def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # invariant to rotation and scale
    assert linear_cka(x, rng.standard_normal((200, 24))) < 0.2  # unrelated features, other width
    assert linear_cka(x, np.zeros((200, 8))) == 0.0


def test_dc_offset_inflates_low_band_cosine_only_when_kept():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((100, 32)) + 5.0  # unrelated features sharing a large positive offset
    b = rng.standard_normal((100, 32)) + 5.0
    ba, bb = bands(a, 8), bands(b, 8)
    assert mean_cosine(ba["low+dc"], bb["low+dc"]) > 0.9  # the trap: "similar" because of the offset
    assert abs(mean_cosine(ba["low"], bb["low"])) < 0.1  # DC removed: nothing in common
    assert mean_cosine(ba["low"], bb["low"][:, :16]) is None


def test_permutation_control_destroys_frequency_structure():
    rng = np.random.default_rng(2)
    t = np.arange(64)
    smooth = np.stack([np.cos(2 * np.pi * rng.integers(1, 4) * t / 64 + rng.uniform(0, 6)) for _ in range(300)])
    rows = similarity(smooth, smooth + 0.01 * rng.standard_normal(smooth.shape))
    low = {r["control"]: r["cosine"] for r in rows if r["band"] == "low" and r["cut_fraction"] == 0.125}
    assert low["none"] > 0.95 and abs(low["permuted"]) < 0.3
