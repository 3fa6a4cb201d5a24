"""The kinds of data real rigs record: RGB and grey images, 16-bit depth, audio at any rate, ``.npy`` arrays.

Real files in tmp_path, the real manifest builder, dataset loader and server preprocessing; the two end-to-end
cases (RGB JPEG + 22,050 Hz WAV, RGB + 16-bit depth PNG) go through ``fdkd run`` in-process and a real uvicorn
server on loopback answers ``/v1/classify`` with a file of the student's kind.
"""

from __future__ import annotations

import io
import json
import logging

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fdkd.pipeline.cli import app
from fdkd.pipeline.config import ConfigError, ManifestDataConfig, load_config
from fdkd.pipeline.data.dataset import load_dataset
from fdkd.pipeline.data.kinds import ColumnSpec, decode
from fdkd.pipeline.data.manifest import ManifestError, build, check
from fdkd.serving.array import ArrayError, decode_npy
from fdkd.serving.image import ImageError, decode_depth
from fdkd.serving.wav import read_wav, resample
from tests.dataset_arrays import arrays
from tests.user_data import WORDS, digit_image, tone, wav_bytes


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _rgb(k: int) -> tuple[np.ndarray, int]:
    """A colour digit: the three channels carry different functions of the digit, so colour is information."""
    img, y = digit_image(k)
    return np.dstack([img, 255 - img, img // 2]).astype(np.uint8), y


def _depth(k: int) -> np.ndarray:
    """A 16-bit depth map (millimetres) whose levels run beyond 8 bits: the digit at 1..~14 m."""
    img, _ = digit_image(k)
    return (img.astype(np.uint16) * 50 + 1000 + k % 7).astype(np.uint16)


def _manifest(folder, n: int, student: str, name: str = "m.csv", **kw) -> tuple:
    """``n`` pairs: an RGB JPEG teacher and a student of kind ``student`` (22,050 Hz WAV of 2 s, depth PNG,
    ``.npy``, or a smaller grey PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    split = n < 100  # too few rows per class for a stratified split: the first two thirds train
    lines = ["teacher,student,label" + (",split" if split else "")]
    for k in range(n):
        rgb, y = _rgb(k)
        Image.fromarray(rgb).save(folder / f"i{k}.jpg", quality=95)
        if student == "audio":
            (folder / f"s{k}.wav").write_bytes(wav_bytes(tone(y, seconds=2.0, rate=22050, seed=k), rate=22050))
            ext = "wav"
        elif student == "depth":
            (folder / f"s{k}.png").write_bytes(_png(_depth(k)))
            ext = "png"
        elif student == "array":
            arr = np.random.default_rng(k).normal(size=(4, 32)).astype(np.float32) + y
            (folder / f"s{k}.npy").write_bytes(_npy(arr))
            ext = "npy"
        else:
            Image.fromarray(rgb[..., 0]).resize((8, 8)).save(folder / f"s{k}.png")
            ext = "png"
        where = ("train" if k < 2 * n // 3 else ("val", "test")[k % 2]) if split else ""
        lines.append(f"i{k}.jpg,s{k}.{ext},{WORDS[y]}" + (f",{where}" if split else ""))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- decoders: each kind's bytes -> array ------------------------------------------------------------------

@pytest.mark.parametrize(("rate_from", "rate_to"), [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 22050)])
def test_resampling_keeps_a_sines_frequency_and_amplitude(rate_from, rate_to):
    """A 1 kHz sine at amplitude 0.5 resampled by the polyphase filter: the spectrum's peak stays at 1 kHz (within
    one FFT bin) and the amplitude within 1 % (the filter's passband ripple is far below that); the length is
    the duration at the new rate."""
    seconds, f0, amp = 2.0, 1000.0, 0.5
    t = np.arange(int(seconds * rate_from)) / rate_from
    out = resample((amp * np.sin(2 * np.pi * f0 * t)).astype(np.float32), rate_from, rate_to)
    assert out.dtype == np.float32 and len(out) == int(seconds * rate_to)
    mid = out[rate_to // 4 : -rate_to // 4]  # away from the filter's edge transients
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    peak_hz = np.argmax(spectrum) * rate_to / len(mid)
    assert abs(peak_hz - f0) <= rate_to / len(mid), peak_hz
    assert abs(np.sqrt(2) * mid.std() - amp) < 0.01 * amp, mid.std()
    # a tone above the new Nyquist frequency is filtered out, not folded back in as an alias
    if rate_to < rate_from:
        hi = resample(np.sin(2 * np.pi * (0.6 * rate_to) * t).astype(np.float32), rate_from, rate_to)
        assert np.abs(hi[rate_to // 4 : -rate_to // 4]).max() < 0.01


def test_a_16_bit_depth_png_keeps_every_level_end_to_end(tmp_path):
    """All 65,536 levels in one 256x256 depth map: the dataset file holds them exactly, the loaded features give
    them back, and the server's preprocessing of the same file gives the dataset's features bit for bit."""
    from types import SimpleNamespace

    from fdkd.serving.upload import preprocess

    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    lines = ["teacher,student,label"]
    for k in range(12):
        rgb, _ = _rgb(k)
        Image.fromarray(rgb).resize((256, 256)).save(tmp_path / f"i{k}.png")
        (tmp_path / f"d{k}.png").write_bytes(_png(np.roll(levels, k)))
        lines.append(f"i{k}.png,d{k}.png,{WORDS[k % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    path = build(ManifestDataConfig(path=tmp_path / "m.csv", student_modality="depth"), tmp_path / "cache")
    z = arrays(path)
    assert z["depth_raw"].dtype == np.uint16
    for k in range(12):
        np.testing.assert_array_equal(z["depth_raw"][k, 0], np.roll(levels, k))
    ds = load_dataset(path)
    fe = ds.frontends["depth"]
    back = np.round((ds.x["depth"].astype(np.float64) * fe.std + fe.mean) / fe.depth_scale)
    np.testing.assert_array_equal(back[:, 0], z["depth_raw"][:, 0].astype(np.float64))
    served = preprocess(SimpleNamespace(frontend=fe), (tmp_path / "d3.png").read_bytes())
    np.testing.assert_array_equal(served[0], ds.x["depth"][3])


def test_decoders_refuse_what_they_cannot_keep():
    with pytest.raises(ImageError, match="8-bit grey PNG; a depth map must be a 16-bit single-channel PNG"):
        decode_depth(_png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ImageError, match="8-bit RGB PNG"):
        decode_depth(_png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(ArrayError, match=r"shape \(4, 31\), expected \(4, 32\)"):
        decode_npy(_npy(np.zeros((4, 31), np.float32)), (4, 32))
    with pytest.raises(ArrayError, match="dtype float64, expected float32"):
        decode_npy(_npy(np.zeros((4, 32))), (4, 32), "float32")
    with pytest.raises(ArrayError, match="real numbers"):
        decode_npy(_npy(np.zeros(3, complex)))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArrayError, match="unreadable .npy"):  # a pickle runs code when loaded: never
        decode_npy(buf.getvalue())
    with pytest.raises(ArrayError, match="NaN or Inf"):
        decode_npy(_npy(np.array([1.0, np.nan], np.float32)))


def test_an_audio_clip_is_resampled_and_cut_to_its_centre():
    rate = 22050
    x = np.zeros(3 * rate, np.float32)
    x[rate : 2 * rate] = 0.5  # the middle second is loud
    spec = ColumnSpec("audio", sample_rate=16000, clip_samples=16000)
    clip = decode(spec, wav_bytes(x, rate=rate, fmt="float32"))
    assert clip.shape == (16000,)
    assert abs(float(clip[2000:-2000].mean()) - 0.5) < 0.01  # the centre second kept, not the silent start
    short = decode(spec, wav_bytes(np.full(8000, 0.25), rate=16000, fmt="float32"))
    assert np.allclose(short[:8000], 0.25, atol=1e-6) and not short[8000:].any()  # zero-padded at the end
    assert read_wav(wav_bytes(x, rate=rate)).sample_rate == rate


# ---- the manifest check: sizes agree or are named; bad files named by row ----------------------------------

def test_images_of_several_sizes_are_a_problem_naming_rows_and_sizes(tmp_path, caplog):
    _manifest(tmp_path, 30, "audio")
    for k in (3, 7):  # lines 5 and 9
        Image.fromarray(_rgb(k)[0]).resize((20, 24)).save(tmp_path / f"i{k}.jpg")
    with pytest.raises(ManifestError) as e:
        build(ManifestDataConfig(path=tmp_path / "m.csv"), tmp_path / "cache")
    text = str(e.value)
    assert "image files differ in size" in text and "16x16 (28 rows" in text and "24x20 (2 rows, e.g. lines 5, 9)" \
        in text and "set data.manifest.image_size" in text, text
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with caplog.at_level(logging.WARNING):
        path = build(ManifestDataConfig(path=tmp_path / "m.csv", image_size=(16, 16)), tmp_path / "cache")
    assert "teacher: 2 of 30 image files resized to 16x16 (bilinear): 24x20 (2 rows, e.g. lines 5, 9)" in caplog.text
    assert load_dataset(path).x["image"].shape == (30, 3, 16, 16)


def test_clips_of_several_lengths_are_a_problem_until_clip_seconds_is_set(tmp_path, caplog):
    _manifest(tmp_path, 30, "audio")
    (tmp_path / "s4.wav").write_bytes(wav_bytes(tone(4, seconds=1.5, rate=22050), rate=22050))
    with pytest.raises(ManifestError) as e:
        build(ManifestDataConfig(path=tmp_path / "m.csv"), tmp_path / "cache")
    assert any("clips differ in length at 16000 Hz: 2.000 s (29 rows" in p.message and "1.500 s (1 row, e.g. line 6)"
               in p.message and "data.manifest.clip_seconds" in p.message for p in e.value.problems), e.value
    c = check(tmp_path / "m.csv")  # `fdkd data manifest`: no config at hand, so a warning that names the setting
    assert not c.problems and any("line 2, student: clips differ in length" in w for w in c.warnings), c.warnings
    with caplog.at_level(logging.WARNING):
        path = build(ManifestDataConfig(path=tmp_path / "m.csv", clip_seconds=1.0), tmp_path / "cache")
    assert "30 longer clip(s) cut to their centre, 0 shorter" in caplog.text
    assert "30 of 30 clips resampled to 16000 Hz (polyphase filter) from 22050" in caplog.text
    assert load_dataset(path).frontends["audio"].clip_samples == 16000


def test_array_shapes_and_dtypes_are_checked_per_row(tmp_path):
    _manifest(tmp_path, 30, "array")
    (tmp_path / "s2.npy").write_bytes(_npy(np.zeros((4, 30), np.float32)))  # line 4
    (tmp_path / "s5.npy").write_bytes(_npy(np.zeros((4, 32), np.float64)))  # line 7
    (tmp_path / "s6.npy").write_bytes(_npy(np.zeros((2, 2, 2, 2), np.float32)))  # line 8
    with pytest.raises(ManifestError) as e:
        build(ManifestDataConfig(path=tmp_path / "m.csv", student_modality="array"), tmp_path / "cache")
    got = {(p.line, p.path): p.message for p in e.value.problems}
    assert "array shape (4, 30), but 28 other row(s) of the column hold (4, 32)" in got[(4, "s2.npy")], got
    assert "array dtype float64, but 28 other row(s) of the column hold float32" in got[(7, "s5.npy")], got
    assert "4 axes" in got[(8, "s6.npy")], got


def _corrupt_jpeg(folder):
    raw = (folder / "i3.jpg").read_bytes()
    (folder / "i3.jpg").write_bytes(raw[: len(raw) // 2])


def _truncated_wav(folder):
    raw = (folder / "s3.wav").read_bytes()
    (folder / "s3.wav").write_bytes(raw[: len(raw) // 2])


def _eight_bit_depth(folder):
    (folder / "s3.png").write_bytes(_png((_depth(3) // 257).astype(np.uint8)))


@pytest.mark.parametrize(("student", "spoil", "column", "path", "text"), [
    ("audio", _corrupt_jpeg, "teacher", "i3.jpg", "unreadable image"),
    ("audio", _truncated_wav, "student", "s3.wav", "unreadable WAV: truncated: the data chunk declares"),
    ("depth", _eight_bit_depth, "student", "s3.png", "8-bit grey PNG; a depth map must be a 16-bit"),
])
def test_a_bad_file_is_a_problem_naming_its_row_and_file_and_nothing_is_written(tmp_path, student, spoil, column,
                                                                               path, text):
    manifest = _manifest(tmp_path / "d", 30, student)
    spoil(tmp_path / "d")
    sets = ["--set", f"runs_dir={tmp_path}/runs", "--set", f"data.cache_dir={tmp_path}/cache", "--set",
            "data.source=manifest", "--set", f"data.manifest.path={manifest}"]
    if student == "depth":
        sets += ["--set", "data.manifest.student_modality=depth"]
    result = CliRunner().invoke(app, ["run", *sets])
    out = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"line 5, {column}: {text}" in out and f"({path})" in out, out
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.npz"))


def test_any_pair_of_kinds_builds(tmp_path, caplog):
    """image -> image at two sizes (the student named image_small), image -> depth, depth -> image, array ->
    audio: each builds, with each input at its own size."""
    small = _manifest(tmp_path / "ii", 30, "image")
    cfg = load_config(None, ["data.source=manifest", f"data.manifest.path={small}",
                             "data.manifest.student_modality=image_small", f"data.cache_dir={tmp_path}/c"])
    from fdkd.pipeline import data

    ds = data.load(cfg)
    assert ds.x["image"].shape[1:] == (3, 16, 16) and ds.x["image_small"].shape[1:] == (1, 8, 8)
    assert cfg.student_modality == "image_small" and cfg.name == "manifest-m"
    depth = _manifest(tmp_path / "rd", 30, "depth")
    for teacher, student in (("image", "depth"), ("depth", "image")):
        lines = depth.read_text().splitlines()
        if teacher == "depth":  # swap the columns
            lines = [lines[0]] + [",".join([r.split(",")[1], r.split(",")[0], *r.split(",")[2:]]) for r in lines[1:]]
        (tmp_path / "rd" / f"{teacher}.csv").write_text("\n".join(lines) + "\n")
        cfg = load_config(None, ["data.source=manifest", f"data.manifest.path={tmp_path}/rd/{teacher}.csv",
                                 f"teacher.modality={teacher}", f"data.manifest.teacher_modality={teacher}",
                                 f"data.manifest.student_modality={student}", f"data.cache_dir={tmp_path}/c"])
        ds = data.load(cfg)
        assert set(ds.x) == {"image", "depth"} and ds.frontends["depth"].to_dict()["kind"] == "depth"
    arrays = _manifest(tmp_path / "aa", 30, "array")
    lines = arrays.read_text().splitlines()
    for k in range(30):
        (tmp_path / "aa" / f"a{k}.wav").write_bytes(wav_bytes(tone(k % 10, seconds=1.0), rate=16000))
    lines = [lines[0]] + [",".join([r.split(",")[1], f"a{k}.wav", *r.split(",")[2:]]) for k, r in enumerate(lines[1:])]
    (tmp_path / "aa" / "m2.csv").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ["data.source=manifest", f"data.manifest.path={tmp_path}/aa/m2.csv",
                             "teacher.modality=array", "data.manifest.teacher_modality=array",
                             "data.manifest.student_modality=audio", f"data.cache_dir={tmp_path}/c"])
    ds = data.load(cfg)
    assert ds.x["array"].shape[1:] == (1, 4, 32) and ds.x["audio"].shape[1:] == (1, 40, 101)
    with pytest.raises(ManifestError) as e:  # depth files, the config left at image -> audio: one problem, the fix
        build(ManifestDataConfig(path=depth), tmp_path / "c")
    assert [str(p) for p in e.value.problems] == [
        "line 1, student: the student column holds .png files, not audio; set data.manifest.student_modality to the "
        "column's kind (depth/image)"]
    with caplog.at_level(logging.WARNING):  # depth maps in a column left at image: built, but said, with the fix
        load_config(None, ["data.source=manifest", f"data.manifest.path={depth}", f"data.cache_dir={tmp_path}/c",
                           "data.manifest.student_modality=image_d"])
        build(ManifestDataConfig(path=depth, student_modality="image_d"), tmp_path / "c")
    assert "student: 30 16-bit single-channel PNG(s) read as 8-bit images (level / 257); if they are depth maps, " \
        "set data.manifest.student_modality=depth" in caplog.text
    with pytest.raises(ConfigError, match="both read 'image'"):
        load_config(None, ["data.source=manifest", f"data.manifest.path={small}",
                           "data.manifest.student_modality=image"])


# ---- inputs users already have: what was read, labels, the run's name ----------------------------------------

def test_manifest_header_problems_say_what_was_read(tmp_path):
    (tmp_path / "semi.csv").write_text("teacher;student;label\na.png;b.wav;one\n")
    c = check(tmp_path / "semi.csv")
    assert "required column is missing from the header (read 1 column(s) with the delimiter ',': " \
           "'teacher;student;label'; the header holds ';'" in c.problems[0].message, c.problems
    (tmp_path / "named.csv").write_text("image,audio\na.png,b.wav\n")
    c = check(tmp_path / "named.csv")
    assert "read 2 column(s) with the delimiter ',': 'image', 'audio'; the columns must be named teacher, " \
           "student, label" in c.problems[0].message, c.problems


def test_labels_differing_only_in_case_or_spacing_are_refused(tmp_path):
    path = _manifest(tmp_path, 30, "audio")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",two,", ",\" Two\",")
    lines.append(lines[1].replace("i0", "i29").replace("s0", "s29").replace(",zero,", ",ZERO ,"))
    path.write_text("\n".join(lines) + "\n")
    c = check(path)
    got = [str(p) for p in c.problems if p.column == "label"]
    assert any("label 'two' differs from 'Two' (line 4) only in case or spacing" in g for g in got), got
    assert any("label 'ZERO' differs from 'zero' (line 2) only in case or spacing" in g for g in got), got


def test_a_run_switched_to_a_manifest_gets_its_own_name(tmp_path):
    cfg = load_config(None, ["data.source=manifest", "data.manifest.path=/x/pairs.csv"])
    assert cfg.name == "manifest-pairs"
    assert load_config(None, ["data.source=manifest", "data.manifest.path=/x/pairs.csv", "name=mine"]).name == "mine"
    assert load_config(None).name == "avdigits"


# ---- end to end: fdkd run, then fdkd serve answers a file of the student's kind ------------------------------

TINY = ["teacher.model.width=8", "teacher.model.depth=2", "teacher.optim.epochs=10", "distill.student.width=8",
        "distill.student.depth=2", "distill.optim.epochs=8", "distill.grad_norm_every=0", "threads=1",
        "validate.latency_repeats=1", "export.parity_batches=[1,7]", "distill.method=kd",
        "quantize.calib_methods=[minmax]", "build.int8_method=minmax", "validate.gates.int8_max_acc_drop_pt=30",
        "validate.gates.int8_min_agree_pct=70", "validate.gates.fp16_max_acc_drop_pt=10"]


@pytest.mark.parametrize("student", ["audio", "depth"])
def test_fdkd_run_and_serve_on_rgb_with_audio_or_depth(tmp_path, student):
    """RGB JPEGs + 22,050 Hz WAVs of 2 s (resampled to 16 kHz), and RGB + 16-bit depth PNGs (an image-augmented
    depth student): `fdkd run` to a validated student, then the server classifies a file of the student's kind."""
    from tests.serving_helpers import running_server

    manifest = _manifest(tmp_path / "d", 200, student)
    extra = ["distill.augment.enabled=false"] if student == "audio" else [
        "data.manifest.student_modality=depth", "distill.image_augment.enabled=true",
        "distill.image_augment.crop_scale=[0.8,1.0]", "teacher.optim.epochs=20", "distill.optim.epochs=16"]
    sets = [f"runs_dir={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache", "data.source=manifest",
            f"data.manifest.path={manifest}", *TINY, *extra]
    result = CliRunner().invoke(app, ["run", *[a for s in sets for a in ("--set", s)]])
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "validation PASSED" in out, out[-3000:]
    run_dir = tmp_path / "runs" / "manifest-m"  # its own name, not the built-in run's
    validation = json.loads((run_dir / "validation.json").read_text())
    acc = {e["name"]: e["metrics"]["accuracy"] for e in validation["artifacts"]}
    assert acc["student.pt"] > 0.3, acc  # 10 classes: chance is 0.1
    manifest_json = json.loads((run_dir / "manifest.json").read_text())
    kind = manifest_json["preprocessing"]["kind"]
    assert kind == {"audio": "audio_logmel", "depth": "depth"}[student]
    body = (tmp_path / "d" / ("s5.wav" if student == "audio" else "s5.png")).read_bytes()
    with running_server(run_dir) as (url, _):
        r = httpx.post(f"{url}/v1/classify", content=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["class_name"] in WORDS
        if student == "depth":  # an 8-bit PNG is refused with the reason
            bad = httpx.post(f"{url}/v1/classify", content=_png(np.zeros((16, 16), np.uint8)), timeout=30)
            assert bad.status_code == 400 and "16-bit single-channel PNG" in bad.text, bad.text


# ---- the server's array route, and the image/depth augmenter ------------------------------------------------

def test_an_npy_upload_gets_the_datasets_features_and_a_wrong_one_is_refused(tmp_path):
    from types import SimpleNamespace

    from fdkd.serving import protocol
    from fdkd.serving.upload import preprocess

    path = _manifest(tmp_path, 30, "array")
    ds = load_dataset(build(ManifestDataConfig(path=path, student_modality="array"), tmp_path / "cache"))
    m = SimpleNamespace(frontend=ds.frontends["array"])
    np.testing.assert_array_equal(preprocess(m, (tmp_path / "s7.npy").read_bytes())[0], ds.x["array"][7])
    for body, text in ((_npy(np.zeros((4, 31), np.float32)), r"shape \(4, 31\), expected \(4, 32\)"),
                       (_npy(np.zeros((4, 32), np.int64)), "dtype int64, expected float32"),
                       (b"\x89PNG\r\n\x1a\n", "not a .npy file")):
        with pytest.raises(protocol.BadRequest, match=text):
            preprocess(m, body)


def _augmenter(fe, x, **cfg):
    from types import SimpleNamespace

    import torch

    from fdkd.pipeline.augment import student_augmenter
    from fdkd.pipeline.config import AudioAugmentConfig, ImageAugmentConfig

    # rows 0..5 train; 6 and 7 (zeros) are the dataset's validation rows
    full = np.concatenate([x, np.zeros((2, *x.shape[1:]), np.float32)])
    ds = SimpleNamespace(frontends={"m": fe}, x={"m": full}, indices=lambda s: np.arange(len(x)))
    aug = student_augmenter(AudioAugmentConfig(), ds, "m", 7, ImageAugmentConfig(enabled=True, **cfg))
    # called as the training loop calls it: the batch's rows and their clean features
    return lambda rows: aug(rows, torch.from_numpy(full[rows.numpy()]))


def test_image_augmentation_is_seeded_training_only_and_keeps_depth_levels():
    import torch

    from fdkd.serving.preprocess import DepthFrontend, ImageFrontend

    rng = np.random.default_rng(0)
    rgb = ImageFrontend(16, 16, 3, 255.0, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = rgb(rng.integers(0, 256, (6, 3, 16, 16)))
    rows = torch.arange(6)
    a, b = _augmenter(rgb, x), _augmenter(rgb, x)
    first = a(rows)
    assert torch.equal(first, b(rows)) and not torch.equal(first, a(rows))  # seeded; each batch draws anew
    assert (first - torch.from_numpy(x)).abs().mean() > 0.1  # it changes the images
    pixels = first * torch.tensor(rgb.std)[:, None, None] + torch.tensor(rgb.mean)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # jitter stays in the pixels' range
    none = _augmenter(rgb, x, crop_p=0.0, jitter_p=0.0)(rows)
    np.testing.assert_allclose(none.numpy(), x, atol=1e-4)  # nothing drawn: the images as they were
    flipped = _augmenter(rgb, x, crop_p=0.0, jitter_p=0.0, hflip_p=1.0)(rows)
    np.testing.assert_allclose(flipped.numpy(), x[..., ::-1], atol=1e-4)
    with pytest.raises(KeyError, match="not a training row"):
        a(torch.tensor([6]))
    depth = DepthFrontend(16, 16, 0.001, 2.0, 1.5)
    levels = rng.integers(0, 65536, (6, 1, 16, 16)).astype(np.uint16)
    d = _augmenter(depth, depth(levels))(rows).numpy()
    for i in range(6):  # nearest-neighbour: every output level is one of the map's own, no blend invented
        got = np.round((d[i].astype(np.float64) * 1.5 + 2.0) / 0.001)
        assert set(got.ravel().tolist()) <= set(levels[i].ravel().astype(float).tolist())


# ---- a WebDataset shard set as input ------------------------------------------------------------------------

def _shards(folder, n: int = 30, per_shard: int = 12) -> list:
    """The RGB + 22,050 Hz WAV pairs of ``_manifest`` packed as WebDataset shards: <key>.jpg, <key>.wav, <key>.cls."""
    import tarfile

    manifest = _manifest(folder / "src", n, "audio")
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    paths = []
    for start in range(0, n, per_shard):
        path = folder / f"shard-{start // per_shard:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for k in range(start, min(n, start + per_shard)):
                t, s, label, split = rows[k]
                for name, data in ((f"s/{k:04d}.jpg", (folder / "src" / t).read_bytes()),
                                   (f"s/{k:04d}.wav", (folder / "src" / s).read_bytes()),
                                   (f"s/{k:04d}.cls", label.encode()), (f"s/{k:04d}.split", split.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def test_a_webdataset_shard_set_unpacks_into_a_manifest_that_builds(tmp_path):
    shards = _shards(tmp_path)
    result = CliRunner().invoke(app, ["data", "webdataset", *map(str, shards), "--out", str(tmp_path / "pairs"),
                                      "--teacher", "jpg", "--student", "wav", "--split", "split"])
    assert result.exit_code == 0 and "30 samples from 3 shard(s)" in " ".join(result.output.split()), result.output
    path = tmp_path / "pairs" / "manifest.csv"
    assert path.read_text().splitlines()[:2] == ["teacher,student,label,split", "s/0000.jpg,s/0000.wav,zero,train"]
    ds = load_dataset(build(ManifestDataConfig(path=path), tmp_path / "cache"))
    direct = load_dataset(build(ManifestDataConfig(path=tmp_path / "src" / "m.csv"), tmp_path / "cache"))
    np.testing.assert_array_equal(ds.x["audio"], direct.x["audio"])  # the same samples as the files themselves
    np.testing.assert_array_equal(ds.x["image"], direct.x["image"])


def test_a_bad_shard_set_names_the_shard_and_sample_and_writes_nothing(tmp_path):
    import tarfile

    from fdkd.pipeline.data.webdataset import ShardError, unpack

    shards = _shards(tmp_path)
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) // 2])  # truncated
    with tarfile.open(shards[2], "a") as tar:  # a sample without its audio, and a key escaping the folder
        for name in ("s/0099.jpg", "s/0099.cls", "../evil.jpg", "../evil.wav", "../evil.cls", "../evil.split"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"one"))
    with pytest.raises(ShardError) as e:
        unpack([*shards, tmp_path / "gone.tar"], tmp_path / "out", "jpg", "wav", split="split")
    text = str(e.value)
    assert f"{shards[1]}: unreadable or truncated tar" in text, text
    assert f"{shards[2]}: sample 's/0099': no student member 'wav', split member 'split' (it has cls, jpg)" in text
    assert "sample '../evil': the key is not a relative path inside the output folder" in text, text
    assert f"{tmp_path / 'gone.tar'}: shard not found" in text
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")) and not (tmp_path.parent / "evil.jpg"
                                                                                          ).exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        unpack(shards[:1], tmp_path / "out", "jpg", "wav")
