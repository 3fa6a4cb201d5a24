"""The instance-paired avblend preset: sharing is what the knob says, disjoint splits, byte-identical rebuilds."""

import numpy as np
import pytest

from fdkd.pipeline.config import AVBlendConfig
from fdkd.pipeline.data import avblend
from fdkd.pipeline.data.dataset import load_dataset, raw_column, row_arrays
from fdkd.pipeline.data.store import Store, dataset_dir

SMALL = dict(pairs=120, seed=2)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    return {s: avblend.build(AVBlendConfig(shared=s, **SMALL), root) for s in (0.0, 0.5, 1.0)}


def _load(path):
    """The per-row arrays and the decoded raw samples (clips as the int16 they were written as)."""
    return {**row_arrays(path), "image_raw": raw_column(path, "image"),
            "audio_raw": (raw_column(path, "audio") * 32768).round().astype(np.int16)}


def test_sharing_is_what_the_knob_says(builds):
    for shared, path in builds.items():
        z = _load(path)
        s = z["shared"].astype(bool)
        same = (z["audio_partner"] == z["image_partner"]) & (z["audio_w"] == z["image_w"]) \
            & (z["audio_quality"] == z["image_quality"])
        np.testing.assert_array_equal(same, s)  # shared pairs carry one event; the others draw their own
        frac = s.mean()
        if shared in (0.0, 1.0):
            assert frac == shared
        else:
            assert abs(frac - shared) < 4 * np.sqrt(shared * (1 - shared) / len(s))
        # the second class is never the label, and w stays in [0, w_max)
        for side in ("image", "audio"):
            assert (z[f"{side}_partner"] != z["label"]).all()
            assert (z[f"{side}_w"] >= 0).all() and (z[f"{side}_w"] < AVBlendConfig().w_max).all()


def test_the_knob_changes_only_the_sharing(builds):
    zero, half, one = (_load(builds[s]) for s in (0.0, 0.5, 1.0))
    for k in ("image_raw", "label", "split", "image_index", "partner_index", "image_w", "image_partner", "voice"):
        np.testing.assert_array_equal(zero[k], one[k])
        np.testing.assert_array_equal(half[k], one[k])
    # pairs shared at 0.5 are shared at 1 too, and their audio draws equal the image's
    assert set(np.flatnonzero(half["shared"])) <= set(np.flatnonzero(one["shared"]))
    assert not np.array_equal(zero["audio_raw"], one["audio_raw"])


def test_images_render_the_saved_parameters(builds):
    from sklearn.datasets import load_digits

    z = _load(builds[1.0])
    digits = load_digits().images.astype(np.float64)
    w = z["image_w"][:, None, None]
    clean = (1 - w) * digits[z["image_index"]] + w * digits[z["partner_index"]]
    # what is left is pixel noise whose level follows the pair's quality draw (less noise at higher quality)
    noise = (z["image_raw"][:, 0] - clean).std((1, 2))
    assert np.corrcoef(noise, 1 - z["image_quality"])[0, 1] > 0.8
    assert noise.max() < AVBlendConfig().image_noise * 16 * 1.2
    labels = load_digits().target
    np.testing.assert_array_equal(labels[z["image_index"]], z["label"])
    np.testing.assert_array_equal(labels[z["partner_index"]], z["image_partner"])


def test_splits_disjoint_by_voice_and_source_image(builds):
    z = _load(builds[0.5])
    meta = Store(builds[0.5]).meta
    variants = meta["build"]["variants"]
    images = [set(z["image_index"][z["split"] == s]) | set(z["partner_index"][z["split"] == s]) for s in range(3)]
    voices = [{variants[v] for v in z["voice"][z["split"] == s]} for s in range(3)]
    for a in range(3):
        assert images[a] and voices[a] and voices[a] <= set(meta["voice_splits"][("train", "val", "test")[a]])
        for b in range(a + 1, 3):
            assert not images[a] & images[b] and not voices[a] & voices[b]
    counts = np.bincount(z["split"], minlength=3)
    assert counts.sum() == SMALL["pairs"] and counts[0] > counts[1] > 0 and counts[2] > 0
    assert z["audio_raw"].shape == (SMALL["pairs"], 16000) and np.abs(z["audio_raw"]).max() > 1000


def test_rebuild_is_byte_identical_and_cached(builds, tmp_path):
    again = avblend.build(AVBlendConfig(shared=0.5, **SMALL), tmp_path)
    assert dataset_dir(again).name == dataset_dir(builds[0.5]).name and again.read_bytes() == builds[0.5].read_bytes()
    assert avblend.dataset_path(AVBlendConfig(shared=0.5, **SMALL), tmp_path) == again
    assert len({dataset_dir(p).name for p in builds.values()}) == 3  # the knob is part of the content hash
    ds = load_dataset(again)
    assert ds.x["image"].shape == (SMALL["pairs"], 1, 8, 8) and ds.x["audio"].shape == (SMALL["pairs"], 1, 40, 101)
    assert ds.class_names[0] == "zero" and np.isfinite(ds.x["image"]).all()


def test_cli_builds_avblend(tmp_path):
    from typer.testing import CliRunner

    from fdkd.pipeline.cli import app

    result = CliRunner().invoke(app, ["data", "avblend", "--shared", "0.25", "--set", f"data.cache_dir={tmp_path}",
                                      "--set", "data.avblend.pairs=40"])
    assert result.exit_code == 0, result.stdout
    (path,) = tmp_path.glob("avblend-*/dataset.json")
    assert path == avblend.dataset_path(AVBlendConfig(shared=0.25, pairs=40), tmp_path)
    assert np.bincount(Store(path).split).tolist() == [28, 6, 6]
    bad = CliRunner().invoke(app, ["data", "avblend", "--shared", "1.5", "--set", f"data.cache_dir={tmp_path}"])
    assert bad.exit_code == 2  # a clear configuration error, no traceback
    assert bad.exception is None or isinstance(bad.exception, SystemExit)
