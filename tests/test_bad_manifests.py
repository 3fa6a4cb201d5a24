"""A matrix of odd and broken manifests through `fdkd data manifest` and `fdkd run` (CLI in-process).

Each case adds one row (or changes the file format) on top of a valid 30-pair baseline. A case
either works (the check passes, the dataset holds the row decoded as expected, and one combined
`fdkd run` over every working case finishes) or ends in one message naming the row's line and
the problem: no traceback, exit code 2 from `fdkd run`, no run directory and no dataset file.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fdkd.pipeline.cli import app
from tests.dataset_arrays import arrays
from tests.user_data import digit_image, make_pairs, tone, wav_bytes

BASE_ROWS = 30  # CSV lines 2..31; an added row is line 32 (JSONL: lines 1..30, added 31)
ODD = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    make_pairs(folder, BASE_ROWS, classes=3)
    rows = [line.split(",") for line in (folder / "pairs.csv").read_text().splitlines()[1:]]
    return folder, [(str(folder / t), str(folder / s), label) for t, s, label in rows]


def _csv(tmp, base_rows, extra, name="m.csv", header="teacher,student,label", newline="\n", bom=False):
    lines = [header] + [",".join(r) for r in base_rows] + extra
    text = newline.join(lines) + newline
    (tmp / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return tmp / name


def _jsonl(tmp, base_rows, extra_objs):
    lines = [json.dumps({"teacher": t, "student": s, "label": lab}) for t, s, lab in base_rows]
    lines += [json.dumps(o) if isinstance(o, dict) else o for o in extra_objs]
    (tmp / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "m.jsonl"


def _img(tmp, name="odd.png"):
    """A baseline-style digit image (a 'one') saved as ``name`` (mode L)."""
    arr, _ = digit_image(1)
    Image.fromarray(arr).save(tmp / name)
    return arr


def _odd_wav(tmp, data: bytes, name="odd.wav"):
    (tmp / name).write_bytes(data)
    return name


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _huge_png_header() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels (400 M): refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + _png_chunk(b"IEND", b""))


# ---- working cases: (setup(tmp, base_rows) -> manifest path, check(dataset arrays, odd row index)) ----------

def _audio_case(fmt, channels=1, seconds=1.0):
    def setup(tmp, rows):
        _img(tmp)
        x = tone(1, seconds)
        _odd_wav(tmp, wav_bytes(np.stack([x] * channels, axis=1) if channels > 1 else x, 16000, fmt))
        return _csv(tmp, rows, ["odd.png,odd.wav,one"])

    def check(z, i):
        atol = {"pcm8": 0.01}.get(fmt, 1e-4)
        x = tone(1, seconds)
        start = (len(x) - 16000 + 1) // 2  # a longer clip keeps its centre (AudioFrontend.fit_clip)
        np.testing.assert_allclose(z["audio_raw"][i], x[start : start + 16000], atol=atol)
    return setup, check


def _image_case(mode):
    def setup(tmp, rows):
        arr = _img(tmp, "plain.png")
        if mode == "I;16":
            Image.fromarray(arr.astype(np.uint16) * 257).save(tmp / "odd.png")
        elif mode == "RGBA":  # right half transparent over white: composited onto black
            rgba = np.dstack([arr] * 3 + [np.full_like(arr, 255)])
            rgba[:, 8:, :3], rgba[:, 8:, 3] = 255, 0
            Image.fromarray(rgba, "RGBA").save(tmp / "odd.png")
        elif mode == "LA":
            Image.fromarray(np.dstack([arr, np.full_like(arr, 255)]), "LA").save(tmp / "odd.png")
        elif mode == "P":
            Image.fromarray(arr).convert("P").save(tmp / "odd.png")
        elif mode == "JPEG":
            Image.fromarray(arr).convert("RGB").save(tmp / "odd.jpg", quality=95)
        elif mode == "RGB":
            Image.fromarray(np.dstack([arr] * 3)).resize((48, 40)).save(tmp / "odd.png")
        (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
        return _csv(tmp, rows, [f"{'odd.jpg' if mode == 'JPEG' else 'odd.png'},odd.wav,one"])

    def check(z, i):
        arr, _ = digit_image(1)
        got = z["image_raw"][i, 0].astype(int)
        if mode == "RGBA":
            assert (got[:, 8:] == 0).all()
            np.testing.assert_array_equal(got[:, :8], arr[:, :8])
        elif mode in ("JPEG", "RGB"):
            assert np.abs(got - arr).mean() < 8
        else:
            np.testing.assert_array_equal(got, arr)
    return setup, check


def _resampled_case(rate: int):
    """A 1 s clip at another rate: resampled to 16 kHz, its tone (450 Hz) kept."""
    def setup(tmp, rows):
        _img(tmp)
        (tmp / "odd.wav").write_bytes(wav_bytes(tone(1, rate=rate), rate))
        return _csv(tmp, rows, ["odd.png,odd.wav,one"])

    def check(z, i):
        clip = z["audio_raw"][i].astype(np.float64)
        assert len(clip) == 16000
        assert abs(np.argmax(np.abs(np.fft.rfft(clip))) - 450) <= 1  # 1 Hz bins over 1 s
    return setup, check


def _bom_crlf(tmp, rows):
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
    return _csv(tmp, rows, ["odd.png,odd.wav,one"], newline="\r\n", bom=True)


def _one_pair_class(tmp, rows):
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(7)))
    return _csv(tmp, rows, ["odd.png,odd.wav,solo"])


def _jsonl_int_label(tmp, rows):
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
    return _jsonl(tmp, rows, [{"teacher": "odd.png", "student": "odd.wav", "label": 5, "extra": [1, 2]}])


def _label_check(name):
    def check(z, i):
        names = json.loads(bytes(z["meta"]).decode())["class_names"]
        assert names[z["label"][i]] == name
    return check


def _no_check(z, i):
    pass


def _unlabelled_row(tmp, rows):
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
    return _csv(tmp, rows, ["odd.png,odd.wav,"])


def _unlabelled_check(z, i):
    assert z["label"][i] == -1 and z["split"][i] == 0  # unlabelled (fdkd.pipeline.data.labels.UNLABELLED), in train
    assert json.loads(bytes(z["meta"]).decode())["class_names"] == ["one", "two", "zero"]


WORKS = {
    "stereo-wav": _audio_case("pcm16", channels=2),
    "pcm8-wav": _audio_case("pcm8"),
    "pcm24-wav": _audio_case("pcm24"),
    "pcm32-wav": _audio_case("pcm32"),
    "float32-wav": _audio_case("float32"),
    "float64-wav": _audio_case("float64"),
    "long-wav-cropped": _audio_case("pcm16", seconds=30.0),
    "wav-8khz-resampled": _resampled_case(8000),
    "wav-44k1-resampled": _resampled_case(44100),
    "png-16bit": _image_case("I;16"),
    "png-rgba": _image_case("RGBA"),
    "png-gray-alpha": _image_case("LA"),
    "png-palette": _image_case("P"),
    "png-rgb-other-size": _image_case("RGB"),
    "jpeg": _image_case("JPEG"),
    "bom-crlf-csv": (_bom_crlf, _no_check),
    "class-with-one-pair": (_one_pair_class, _label_check("solo")),
    "jsonl-integer-label": (_jsonl_int_label, _label_check("5")),
    "unlabelled-train-row": (_unlabelled_row, _unlabelled_check),
}


# ---- failing cases: setup(tmp, base_rows) -> (manifest, line, text[, cli options, run sets]) ----------------

def _bad_wav(data: bytes):
    def setup(tmp, rows):
        _img(tmp)
        _odd_wav(tmp, data)
        return _csv(tmp, rows, ["odd.png,odd.wav,one"])
    return setup


def _bad_png(data_fn):
    def setup(tmp, rows):
        (tmp / "odd.png").write_bytes(data_fn())
        (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
        return _csv(tmp, rows, ["odd.png,odd.wav,one"])
    return setup


def _row(extra_row, files=True, header="teacher,student,label"):
    def setup(tmp, rows):
        if files:
            _img(tmp)
            (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
        return _csv(tmp, rows, [extra_row], header=header)
    return setup


def _partial_split(tmp, rows):
    lines = ["teacher,student,label,split"] + [",".join(r) + ("," if i % 2 else ",train") for i, r in enumerate(rows)]
    (tmp / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp / "m.csv"


def _split_apart(tmp, rows):
    splits = (["train"] * 6 + ["val", "test"] * 2) * 3
    lines = ["teacher,student,label,split"] + [",".join(r) + f",{s}" for r, s in zip(rows, splits, strict=True)]
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(0)))
    lines.append(f"{rows[0][0]},odd.wav,{rows[0][2]},test")  # line 2's image again, in test
    (tmp / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp / "m.csv"


def _empty_label_in(split):
    """The baseline with a split column, plus an unlabelled row in ``split`` (val/test rows need a label)."""
    def setup(tmp, rows):
        splits = (["train"] * 6 + ["val", "test"] * 2) * 3
        lines = ["teacher,student,label,split"] + [",".join(r) + f",{s}" for r, s in zip(rows, splits, strict=True)]
        _img(tmp)
        (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
        lines.append(f"odd.png,odd.wav,,{split}")
        (tmp / "m.csv").write_text("\n".join(lines) + "\n")
        return tmp / "m.csv"
    return setup


def _label_only_in_test(tmp, rows):
    splits = (["train"] * 6 + ["val", "test"] * 2) * 3
    lines = ["teacher,student,label,split"] + [",".join(r) + f",{s}" for r, s in zip(rows, splits, strict=True)]
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
    lines.append("odd.png,odd.wav,nine,test")
    (tmp / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp / "m.csv"


def _jsonl_wrong(obj):
    def setup(tmp, rows):
        _img(tmp)
        (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
        return _jsonl(tmp, rows, [obj])
    return setup


def _not_utf8(tmp, rows):
    _img(tmp)
    (tmp / "odd.wav").write_bytes(wav_bytes(tone(1)))
    path = _csv(tmp, rows, [])
    path.write_bytes(path.read_bytes() + "odd.png,odd.wav,caf\xe9\n".encode("latin-1"))
    return path


def _huge_wav(tmp, rows):
    _img(tmp)
    _odd_wav(tmp, wav_bytes(np.zeros(16000 * 40)))  # 1.2 MB
    return _csv(tmp, rows, ["odd.png,odd.wav,one"])


def _tiny(tmp, rows):
    """Four pairs in all: too few to give val and test a row each."""
    return _csv(tmp, rows[:4], [])


FAILS = {
    "corrupt-wav": (_bad_wav(b"RIFF\x10\x00\x00\x00garbage!" * 3), ODD, "unreadable WAV"),
    "truncated-wav-frames": (_bad_wav(wav_bytes(tone(1))[:-1]), ODD, "truncated: the data chunk declares 32000 "
                             "bytes but the file holds 31999"),
    "empty-wav": (_bad_wav(b""), ODD, "empty file"),
    "header-only-wav": (_bad_wav(wav_bytes(np.zeros(0))), ODD, "WAV has no samples"),
    "mulaw-wav": (_bad_wav(wav_bytes(tone(1))[:20] + struct.pack("<H", 7) + wav_bytes(tone(1))[22:]), ODD,
                  "unsupported WAV encoding"),
    "float-wav-unscaled": (_bad_wav(wav_bytes(tone(1) * 32767, fmt="float32")), ODD, "looks unscaled"),
    "nan-wav": (_bad_wav(wav_bytes(np.full(16000, np.nan), fmt="float32")), ODD, "NaN or Inf"),
    "huge-wav": (_huge_wav, ODD, "over the 1 MB limit", ["--max-file-mb", "1"], ["data.manifest.max_file_mb=1"]),
    "huge-png-pixels": (_bad_png(_huge_png_header), ODD, "too large"),
    "corrupt-png": (_bad_png(lambda: b"\x89PNG\r\n\x1a\nbroken"), ODD, "unreadable image"),
    # the server's image policy (fdkd.serving.image): what /v1/classify would refuse is refused here, by row
    "webp-named-png": (_bad_png(lambda: _png_bytes("WEBP")), ODD, "not a PNG/JPEG/BMP/GIF image"),
    "tiff-named-png": (_bad_png(lambda: _png_bytes("TIFF")), ODD, "not a PNG/JPEG/BMP/GIF image"),
    "png-metadata-bomb": (_bad_png(lambda: _ztxt_bomb_png()), ODD, "metadata limit"),
    "truncated-png": (_bad_png(lambda: _png_bytes()[:-30]), ODD, "unreadable image"),
    "missing-file": (_row("gone.png,odd.wav,one"), ODD, "file not found"),
    "unsupported-type": (_row("odd.gif,odd.wav,one"), ODD, "unsupported file type"),
    "empty-label-in-val": (_empty_label_in("val"), ODD, "empty label in the 'val' split"),
    "empty-label-in-test": (_empty_label_in("test"), ODD, "empty label in the 'test' split"),
    "label-only-in-test": (_label_only_in_test, ODD, "never appears in the training split"),
    "duplicate-row": (_row("{0},{1},{2}"), ODD, "duplicate of line 2"),
    "duplicate-row-unlabelled": (_row("{0},{1},"), ODD, "the pair of line 2 again, without its label"),
    "file-with-two-labels": (_row("{0},odd.wav,two"), ODD, "labelled 'two' here but 'zero' on line 2"),
    "partial-split": (_partial_split, 3, "split is empty on lines 3, 5, 7"),
    "shared-file-split-apart": (_split_apart, ODD, "shares a file or group with line 2"),
    "too-few-rows": (_tiny, 1, "split is empty"),
    "image-in-audio-column": (_row("odd.png,odd.png,one"), ODD, "column mixes modalities"),
    "extra-field": (_row("odd.png,odd.wav,one,oops"), ODD, "row has 4 fields; the header has 3"),
    "not-utf8-csv": (_not_utf8, ODD, "not UTF-8"),
    "missing-column": (_row("odd.png,odd.wav,one", header="teacher,student,lbl"), 1, "required column is missing"),
    "jsonl-list-path": (_jsonl_wrong({"teacher": ["odd.png"], "student": "odd.wav", "label": "one"}), 31,
                        "must be a string, got list"),
    "jsonl-bool-label": (_jsonl_wrong({"teacher": "odd.png", "student": "odd.wav", "label": True}), 31,
                         "must be a string or an integer, got bool"),
    "jsonl-not-object": (_jsonl_wrong("[1, 2, 3]"), 31, "must be a JSON object"),
    "jsonl-bad-json": (_jsonl_wrong('{"teacher": "odd.png",'), 31, "not valid JSON"),
}


def _png_bytes(fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _ztxt_bomb_png() -> bytes:
    """A valid PNG with a zTXt chunk that inflates to 8 MiB (a few kB on disk)."""
    png = _png_bytes()
    bomb = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (8 << 20), 9))
    return png[:33] + bomb + png[33:]  # after the signature and IHDR


def _invoke(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result, " ".join(result.output.split())


def _run_args(root, manifest, name, *sets):
    base = [f"runs_dir={root}/runs", f"data.cache_dir={root}/data", f"name={name}", "data.source=manifest",
            f"data.manifest.path={manifest}", "data.manifest.image_size=[16,16]", "data.manifest.clip_seconds=1",
            "threads=1", "teacher.optim.stop=epochs", "distill.optim.stop=epochs",  # fixed epochs (a manifest's: early)
            *sets]
    return ["run", *[a for s in base for a in ("--set", s)]]


@pytest.mark.parametrize("case", sorted(FAILS))
def test_bad_manifest_names_the_row_and_leaves_nothing(tmp_path, base, case):
    setup, line, text, *opts = FAILS[case]
    cli_opts, run_sets = (opts + [[], []])[:2]
    _, rows = base
    path = setup(tmp_path, rows)
    if "{0}" in path.read_text(errors="replace"):
        path.write_text(path.read_text().format(*rows[0]))
    result, out = _invoke(["data", "manifest", path, *cli_opts])
    assert result.exit_code == 1, out
    assert f"│ {line} " in out, out  # the table (cells wrap); the exact text is checked in the JSON form
    report = json.loads(_invoke(["data", "manifest", path, "--json", *cli_opts])[0].stdout)
    assert any(p["line"] == line and text in str(p) for p in report["problems"]), report["problems"]

    result, out = _invoke(_run_args(tmp_path, path, "bad", *run_sets))
    assert result.exit_code == 2, out
    assert out.startswith("error:") and f"line {line}" in out and text in out, out
    assert not (tmp_path / "runs" / "bad").exists()  # no half-made run directory
    assert not list(tmp_path.glob("data/*"))  # and no dataset, not even a partial one


@pytest.mark.parametrize("case", sorted(WORKS))
def test_odd_but_valid_manifest_works_and_decodes_right(tmp_path, base, case):
    from fdkd.pipeline.config import ManifestDataConfig
    from fdkd.pipeline.data.manifest import build

    setup, check = WORKS[case]
    path = setup(tmp_path, base[1])
    result, out = _invoke(["data", "manifest", path])
    assert result.exit_code == 0 and "no problems" in out, out
    assert ("warning: label 'solo' (1 row(s)) has no test row" in out) == (case == "class-with-one-pair"), out
    z = arrays(build(ManifestDataConfig(path=path, image_size=(16, 16), clip_seconds=1.0), tmp_path / "cache"))
    assert len(z["label"]) == BASE_ROWS + 1
    check(z, BASE_ROWS)


def test_fdkd_run_over_every_working_case_at_once(tmp_path, base):
    """33 pairs (a BOM + CRLF CSV): 16 baseline rows and every odd-but-valid row, one unlabelled; the run finishes."""
    rows = base[1][:16]
    extra = []
    for case, (setup, _) in sorted(WORKS.items()):
        if case in ("jsonl-integer-label", "bom-crlf-csv"):
            continue
        sub = tmp_path / case
        sub.mkdir()
        made = setup(sub, [])
        for line in made.read_text().splitlines()[1:]:
            t, s, label = line.split(",")
            extra.append(f"{sub / t},{sub / s},{label}")
    path = _csv(tmp_path, rows, extra, newline="\r\n", bom=True)
    result, out = _invoke(_run_args(tmp_path, path, "odd", "teacher.model.width=4", "teacher.model.depth=2",
                                    "teacher.optim.epochs=2", "distill.student.width=4", "distill.student.depth=2",
                                    "distill.optim.epochs=2", "distill.grad_norm_every=0",
                                    "quantize.calib_methods=[entropy]", "build.int8_method=entropy",
                                    "export.parity_batches=[1,7]", "validate.latency_repeats=1",
                                    "validate.gates.fp16_max_acc_drop_pt=100",
                                    "validate.gates.int8_max_acc_drop_pt=100"))
    assert result.exit_code == 0, out
    run_dir = tmp_path / "runs" / "odd"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s: r["status"] for s, r in manifest["stages"].items()} == {
        "data": "done", "teacher": "done", "distill": "done", "export": "done", "calibrate": "done",
        "quantize": "done", "build": "skipped", "validate": "done"}
    assert "solo" in manifest["class_names"] and len(manifest["class_names"]) == 4
    from fdkd.pipeline.data.dataset import load_dataset

    ds = load_dataset(manifest["artifacts"]["dataset"]["path"])
    assert len(ds.y) == 33
    calib = manifest["artifacts"]["calib.npz"]
    assert calib["samples"] == len(ds.indices("train"))  # fewer training rows than calib_samples: all of them
    assert set(calib["per_class"]) == {"0", "1", "2", "3"}  # the one-pair class is calibrated too
    assert (ds.y == -1).sum() == 1 and calib["unlabelled"] == 1  # the unlabelled row: in train, calibrated too
