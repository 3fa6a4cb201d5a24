"""Built-in data (determinism, voice-disjoint splits, pairing), features, WAV I/O, manifest report."""

import json
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from fdkd.pipeline.config import AVDigitsConfig, ManifestDataConfig
from fdkd.pipeline.data import avdigits
from fdkd.pipeline.data.dataset import load_dataset, row_arrays
from fdkd.pipeline.data.manifest import ManifestError, check_manifest
from fdkd.pipeline.data.manifest import build as build_manifest
from fdkd.pipeline.data.store import Store
from fdkd.serving.preprocess import AudioFrontend
from fdkd.serving.wav import WavError, read_wav, write_wav
from tests.dataset_arrays import builtin

SMALL = AVDigitsConfig(max_images=60, seed=3)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    return avdigits.build(SMALL, tmp_path_factory.mktemp("a"))


def test_rebuild_is_byte_identical(small_build, tmp_path):
    again = avdigits.build(SMALL, tmp_path)
    assert again.parent.name == small_build.parent.name
    assert again.read_bytes() == small_build.read_bytes()  # the record holds every shard's sha256
    for a, b in zip(sorted(small_build.parent.rglob("*.*")), sorted(again.parent.rglob("*.*")), strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name


class _Always:  # a generator whose every draw is 0: each rule applies
    def random(self):
        return 0.0


class _Never:
    def random(self):
        return 0.99


def test_pronunciation_rules_rewrite_the_accent_phonemes():
    assert avdigits.pronunciation_variant("'eIt", _Always()) == "'e:t"  # FACE monophthong
    assert avdigits.pronunciation_variant("Tr'i:", _Always()) == "tr'i:"  # TH stopping
    assert avdigits.pronunciation_variant("f'o@", _Always()) == "f'o@r"  # rhotic
    assert avdigits.pronunciation_variant("z'i@roU", _Always()) == "z'i@ro:"  # GOAT, and i@ before r untouched
    assert avdigits.pronunciation_variant("s'Iks", _Always()) == "s'iks"
    assert avdigits.pronunciation_variant("f'aI2v", _Always()) == "f'aI2v"  # a Scottish PRICE: no rule of ours
    assert avdigits.pronunciation_variant("t'u:", _Always()) == "t'U"
    assert avdigits.pronunciation_variant("'eIt", _Never()) == "'eIt"


def test_pronunciation_variants_change_exactly_the_training_clips_they_re_pronounce(small_build, tmp_path, monkeypatch):
    varied = avdigits.build(SMALL.model_copy(update={"pronunciation_variants": 1.0}), tmp_path)
    again = avdigits.build(SMALL.model_copy(update={"pronunciation_variants": 1.0}), tmp_path / "again")
    assert varied.parent.name != small_build.parent.name and again.read_bytes() == varied.read_bytes()
    # the rules are build parameters: a changed table is a new file, not a stale cache hit
    monkeypatch.setattr(avdigits, "PRONUNCIATION_RULES", avdigits.PRONUNCIATION_RULES[:-1])
    assert avdigits.dataset_path(SMALL.model_copy(update={"pronunciation_variants": 1.0}), tmp_path) != varied
    assert avdigits.dataset_path(SMALL, tmp_path).parent.name == small_build.parent.name  # off: the rules do not matter
    a, b = builtin(small_build), builtin(varied)
    spoken, split = b["phonemes"], b["split"]
    assert "phonemes" not in a  # off: the dataset is what it always was
    assert all(p == "" for p in spoken[split != 0])  # validation, test and unseen clips: the plain word
    train = np.flatnonzero(split == 0)
    assert (spoken[train] != "").mean() > 0.3  # 9 of 10 words have a rule (not "seven"); chance 1/2 each
    assert any(p == "'e:t" for p in spoken[train])
    changed = (a["audio_raw"] != b["audio_raw"]).any(1)
    assert np.array_equal(changed, spoken != "")  # exactly the re-pronounced clips differ, nothing else
    for k in ("label", "split", "image_index", "voice", "accent", "image_raw"):
        np.testing.assert_array_equal(a[k], b[k])


def test_cache_hit_and_parameters_in_the_name(small_build):
    mtime = small_build.stat().st_mtime_ns
    assert small_build.name == "dataset.json" and small_build.parent.parent.name.startswith("a")
    assert avdigits.build(SMALL, small_build.parent.parent) == small_build
    assert small_build.stat().st_mtime_ns == mtime  # not rebuilt
    other = avdigits.dataset_path(SMALL.model_copy(update={"seed": 4}), small_build.parent.parent)
    assert other != small_build


def test_pairs_are_within_class_and_splits_voice_disjoint(small_build):
    from sklearn.datasets import load_digits

    z = builtin(small_build)
    meta = Store(small_build).meta
    digits = load_digits()
    idx = z["image_index"]
    np.testing.assert_array_equal(digits.target[idx], z["label"])
    np.testing.assert_array_equal(digits.images[idx].astype(np.uint8)[:, None], z["image_raw"])
    pools = [set(meta["voice_splits"][s]) for s in ("train", "val", "test")]
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    variants = meta["build"]["variants"]
    for s, pool in enumerate(pools):
        heard = {variants[v] for v in z["voice"][z["split"] == s]}
        assert heard and heard <= pool
    # images are disjoint across splits too
    per_split = [set(idx[z["split"] == s]) for s in range(3)]
    assert not (per_split[0] & per_split[1]) and not (per_split[0] & per_split[2])
    n_unseen = int((z["split"] == 3).sum())  # one extra unseen-accent clip per test image
    assert n_unseen == int((z["split"] == 2).sum())
    assert z["audio_raw"].shape == (60 + n_unseen, 16000) and z["audio_raw"].dtype == np.int16
    assert np.abs(z["audio_raw"]).max() > 1000  # not silence


def test_loaded_features_are_standardised_on_train(small_build):
    ds = load_dataset(small_build)
    n = 60 + len(ds.indices("test_unseen_accent"))
    assert ds.x["audio"].shape == (n, 1, 40, 101) and ds.x["image"].shape == (n, 1, 8, 8)
    train = ds.indices("train")
    for m in ("audio", "image"):
        assert abs(float(ds.x[m][train].mean())) < 1e-3
        assert float(ds.x[m][train].std()) == pytest.approx(1.0, abs=1e-3)
        assert np.isfinite(ds.x[m]).all()
    assert ds.frontends["audio"].to_dict()["n_mels"] == 40


def test_logmel_peaks_at_the_tone_frequency():
    fe = AudioFrontend()
    t = np.arange(fe.clip_samples) / fe.sample_rate
    low, high = (fe.logmel(0.5 * np.sin(2 * np.pi * f * t)).mean(-1)[0] for f in (300.0, 3000.0))
    assert low.argmax() < high.argmax()
    with pytest.raises(ValueError, match="expected 16000"):
        fe.logmel(np.zeros((1, 100)))


def test_logmel_matches_a_per_frame_float64_reference_across_chunks():
    """The batched float32 log-mel (chunks of 128 clips, one BLAS product per chunk) equals the textbook
    per-frame computation in float64: reflect-pad, Hann-window, |rfft|^2, mel filters, log."""
    from fdkd.serving.preprocess import _window, mel_filterbank

    fe = AudioFrontend()
    rng = np.random.default_rng(7)
    waves = rng.uniform(-0.5, 0.5, (130, fe.clip_samples)).astype(np.float32)  # 2 chunks, the last of 2 clips
    got = fe.logmel(waves)
    window = _window(fe.n_fft, fe.win_length).astype(np.float64)
    fbank = mel_filterbank(fe.sample_rate, fe.n_fft, fe.n_mels, fe.f_min, fe.f_max).astype(np.float64)
    for i in (0, 127, 128, 129):
        padded = np.pad(waves[i].astype(np.float64), fe.n_fft // 2, mode="reflect")
        for t in (0, 37, fe.frames - 1):
            frame = padded[t * fe.hop_length : t * fe.hop_length + fe.n_fft] * window
            want = np.log(fbank @ np.abs(np.fft.rfft(frame)) ** 2 + fe.log_floor)
            np.testing.assert_allclose(got[i, :, t], want, rtol=0, atol=1e-4, err_msg=f"clip {i}, frame {t}")


def test_wav_roundtrip_and_errors():
    x = np.sin(np.linspace(0, 20, 800)).astype(np.float32) * 0.5
    pcm = read_wav(write_wav(x, 16000))
    assert pcm.sample_rate == 16000 and pcm.format == "pcm16"
    np.testing.assert_allclose(pcm.mono(), x, atol=1 / 16000)
    flt = read_wav(write_wav(x, 8000, float32=True))
    assert flt.format == "float32" and flt.sample_rate == 8000
    np.testing.assert_array_equal(flt.mono(), x)
    with pytest.raises(WavError, match="RIFF"):
        read_wav(b"hello")
    with pytest.raises(WavError, match="no fmt chunk"):
        read_wav(b"RIFF" + struct.pack("<I", 4) + b"WAVE")


def _png(path, value=128, size=(8, 8)):
    from PIL import Image

    Image.fromarray(np.full(size, value, np.uint8)).save(path)


@pytest.fixture()
def broken_manifest(tmp_path):
    """A manifest with one good row and one row per kind of fault."""
    _png(tmp_path / "ok.png")
    (tmp_path / "ok.wav").write_bytes(write_wav(np.zeros(16000), 16000))
    (tmp_path / "rate.wav").write_bytes(write_wav(np.zeros(8000), 8000))
    nan = np.zeros(16000, np.float32)
    nan[10] = np.nan
    (tmp_path / "nan.wav").write_bytes(write_wav(nan, 16000, float32=True))
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("x")
    rows = [
        "teacher,student,label,split",
        "ok.png,ok.wav,one,train",          # line 2: fine
        "missing.png,ok.wav,one,train",     # 3: missing file
        "ok.png,empty.wav,one,train",       # 4: empty file
        "ok.png,rate.wav,one,train",        # 5: another sample rate: resampled, not a problem
        "ok.png,nan.wav,one,train",         # 6: NaN
        "garbage.png,ok.wav,one,train",     # 7: unreadable image
        "ok.png,notes.txt,one,train",       # 8: unsupported type
        "ok.png,ok.wav,two,val",            # 9: label never in train
        "ok.png,ok.wav,one,holdout",        # 10: bad split
        "ok.png,ok.wav,,val",               # 11: empty label outside train (fine in train: unlabelled)
    ]
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_manifest_reports_every_problem_at_once(broken_manifest):
    rows, problems = check_manifest(broken_manifest)
    assert len(rows) == 10
    by_line = {}
    for p in problems:
        by_line.setdefault(p.line, []).append(p)
    assert 2 not in by_line and 5 not in by_line
    expect = {3: ("teacher", "missing.png", "file not found"), 4: ("student", "empty.wav", "empty file"),
              6: ("student", "nan.wav", "NaN"),
              7: ("teacher", "garbage.png", "unreadable image"), 8: ("student", "notes.txt", "unsupported"),
              9: ("label", "", "never appears in the training split"), 10: ("split", "", "holdout"),
              11: ("label", "", "empty label in the 'val' split")}
    for line, (column, path, text) in expect.items():
        assert any(p.column == column and p.path == path and text in p.message for p in by_line[line]), line
    _, with_classes = check_manifest(broken_manifest, classes=["one"])
    assert any(p.line == 9 and "unknown label 'two'" in p.message for p in with_classes)


def test_manifest_cli_prints_report_and_fails(broken_manifest):
    from fdkd.pipeline.cli import app

    result = CliRunner().invoke(app, ["data", "manifest", str(broken_manifest), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["rows"] == 10 and len(report["problems"]) >= 9
    assert {"line", "column", "path", "message"} <= set(report["problems"][0])


def test_jsonl_manifest_bad_lines_and_missing_fields(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.wav").write_bytes(write_wav(np.zeros(16000), 16000))
    path = tmp_path / "m.jsonl"
    path.write_text('{"teacher": "a.png", "student": "a.wav", "label": "x"}\n{not json\n'
                    '{"teacher": "a.png", "label": "x"}\n[1, 2]\n')
    rows, problems = check_manifest(path)
    assert len(rows) == 2
    text = [str(p) for p in problems]
    assert any(t.startswith("line 2:") and "not valid JSON" in t for t in text)
    assert any(t.startswith("line 3, student:") and "missing" in t for t in text)
    assert any(t.startswith("line 4:") and "JSON object" in t for t in text)


def test_valid_manifest_builds_a_dataset(tmp_path):
    lines = ["teacher,student,label"]
    rng = np.random.default_rng(0)
    for i in range(30):
        label = ["cat", "dog", "owl"][i % 3]
        _png(tmp_path / f"{i}.png", value=40 * (i % 3), size=(12, 10))
        (tmp_path / f"{i}.wav").write_bytes(write_wav(rng.uniform(-0.1, 0.1, 12000), 16000))
        lines.append(f"{i}.png,{i}.wav,{label}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    mcfg = ManifestDataConfig(path=tmp_path / "m.csv", image_size=(16, 16))
    ds = load_dataset(build_manifest(mcfg, tmp_path / "cache"))
    assert ds.class_names == ["cat", "dog", "owl"]
    # clip_seconds unset: the clips' own 0.75 s (12,000 samples, 76 frames); image_size set: resized to 16x16
    assert ds.x["image"].shape == (30, 1, 16, 16) and ds.x["audio"].shape == (30, 1, 40, 76)
    assert {0, 1, 2} == set(ds.split.tolist())
    (tmp_path / "7.wav").write_bytes(b"")
    with pytest.raises(ManifestError, match="line 9, student: empty file"):
        build_manifest(mcfg, tmp_path / "cache2")


def test_unseen_accent_split_holds_only_held_out_accents(small_build):
    z = row_arrays(small_build)
    meta = Store(small_build).meta
    accents = meta["accents"]
    unseen = set(SMALL.unseen_accents)
    assert unseen and not unseen & set(SMALL.accents)
    heard = {s: {accents[a] for a in z["accent"][z["split"] == s]} for s in range(4)}
    assert heard[3] and heard[3] <= unseen  # split 3 hears only held-out accents ...
    for s in range(3):
        assert heard[s] and not heard[s] & unseen  # ... and no other split hears any of them
    # one extra clip per test image, spoken by a test-split voice variant, same label
    test, extra = z["split"] == 2, z["split"] == 3
    assert sorted(z["image_index"][extra]) == sorted(z["image_index"][test])
    variants = meta["build"]["variants"]
    assert {variants[v] for v in z["voice"][extra]} <= set(meta["voice_splits"]["test"])
    ds = load_dataset(small_build)
    assert len(ds.indices("test_unseen_accent")) == int(extra.sum()) and ds.has_split("test_unseen_accent")
    np.testing.assert_array_equal(ds.indices("test"), np.flatnonzero(test))  # test stays in-domain only


def test_no_unseen_accents_means_no_extra_split(tmp_path):
    from pydantic import ValidationError

    path = avdigits.build(AVDigitsConfig(max_images=30, seed=1, unseen_accents=()), tmp_path)
    assert set(Store(path).split.tolist()) <= {0, 1, 2}
    assert not load_dataset(path).has_split("test_unseen_accent")
    with pytest.raises(ValidationError, match="must not also be in accents"):
        AVDigitsConfig(unseen_accents=("en-us",))


def test_pronunciation_variant_clips_are_added_beside_the_plain_ones(small_build, tmp_path):
    extra = avdigits.build(SMALL.model_copy(update={"pronunciation_variant_clips": 1}), tmp_path)
    a, b = builtin(small_build), builtin(extra)
    n = len(a["label"])
    for k in ("audio_raw", "label", "split", "image_index", "voice", "accent", "image_raw"):
        np.testing.assert_array_equal(a[k], b[k][:n])  # every clip of the plain build, byte for byte
    train_images = a["image_index"][a["split"] == 0]
    added = slice(n, None)
    assert sorted(b["image_index"][added]) == sorted(set(train_images))  # one more clip per training image
    assert (b["split"][added] == 0).all() and (b["phonemes"][:n] == "").all()
    spoken = b["phonemes"][added]
    words = np.array(avdigits.WORDS)[b["label"][added]]
    assert all(p != "" for p, w in zip(spoken, words, strict=True) if w not in ("seven",))  # re-pronounced


def test_a_reload_of_the_same_dataset_is_served_from_memory_as_a_private_copy(small_build, tmp_path, monkeypatch):
    import shutil

    from fdkd.pipeline.data import dataset

    shutil.copytree(small_build.parent, tmp_path / "ds")
    path = tmp_path / "ds" / small_build.name
    reads = []
    read = dataset._dense
    monkeypatch.setattr(dataset, "_dense", lambda *a: reads.append(a) or read(*a))
    first = load_dataset(path)
    expected = {m: a.copy() for m, a in first.x.items()}
    first.x["audio"][:] = 0  # a caller changing its arrays in place
    first.y[:] = -1
    first.meta["name"] = "changed"
    second = load_dataset(path)
    assert len(reads) == 1  # the log-mel was computed once
    for m, a in expected.items():
        np.testing.assert_array_equal(second.x[m], a)
    assert second.y.min() >= 0 and second.meta["name"] == "avdigits"
    # a new version of the dataset (written anew, as every build writes) is read again
    other = avdigits.build(SMALL.model_copy(update={"seed": 4}), tmp_path / "other")
    shutil.rmtree(path.parent)
    shutil.copytree(other.parent, path.parent)
    third = load_dataset(path)
    assert len(reads) == 2 and not np.array_equal(third.x["audio"], expected["audio"])
    np.testing.assert_array_equal(third.x["audio"], load_dataset(other).x["audio"])
    # features over the limit are not kept: every load reads the file
    monkeypatch.setattr(dataset, "MEMO_MAX_BYTES", 0)
    reads.clear()
    load_dataset(path)
    load_dataset(path)
    assert len(reads) == 2


def test_the_features_a_build_computes_are_a_fresh_loads_bit_for_bit(tmp_path):
    """The build keeps the log-mel it computes for the statistics as the process's first load: it must equal what a
    load decoding the written PNG and WAV bytes computes (the lossless round trip and the standardisation)."""
    from fdkd.pipeline.data import dataset

    path = avdigits.build(SMALL.model_copy(update={"seed": 5}), tmp_path)
    assert dataset._LAST is not None and dataset._LAST[0] == dataset._file_key(path)
    seeded = load_dataset(path)
    dataset._LAST = None
    fresh = load_dataset(path)
    for m in ("image", "audio"):
        np.testing.assert_array_equal(seeded.x[m], fresh.x[m])
    np.testing.assert_array_equal(seeded.split, fresh.split)


def test_cached_resampling_filter_gives_scipys_resample_poly_bit_for_bit():
    from scipy.signal import resample_poly

    x = np.random.default_rng(0).standard_normal(9000)
    for up, down in ((16000, 22050), (16000, 44100), (2, 3)):
        np.testing.assert_array_equal(avdigits.resample(x, up, down), resample_poly(x, up, down))
