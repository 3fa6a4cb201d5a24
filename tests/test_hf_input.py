"""A Hugging Face ``datasets`` folder (``save_to_disk``) as the data: column mapping, its checks, ``fdkd run``.

Folders are written with pyarrow in ``save_to_disk``'s layout (tests/hf_folder.py); the cells are real JPEG, PNG
and WAV bytes. The real manifest check, builder and run read them through ``fdkd.pipeline.data.hf``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("pyarrow", reason="the [hf] extra (pyarrow) reads a datasets folder; it is in [dev]")

from fdkd.pipeline.cli import app  # noqa: E402
from fdkd.pipeline.config import ManifestDataConfig  # noqa: E402
from fdkd.pipeline.data import hf  # noqa: E402
from fdkd.pipeline.data.dataset import load_dataset  # noqa: E402
from fdkd.pipeline.data.manifest import ManifestError, build, check  # noqa: E402
from fdkd.pipeline.data.store import Store  # noqa: E402
from tests.hf_folder import write_dataset, write_dataset_dict  # noqa: E402
from tests.user_data import WORDS, digit_image, tone, wav_bytes  # noqa: E402

FEATURES = {"photo": {"_type": "Image"}, "speech": {"sampling_rate": 22050, "_type": "Audio"},
            "digit": {"names": list(WORDS), "_type": "ClassLabel"}}
COLUMNS = {"teacher": "photo", "student": "speech", "label": "digit"}


def _jpg(k: int) -> tuple[bytes, int]:
    """A colour digit as a JPEG: the three channels carry different functions of the digit."""
    img, y = digit_image(k)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([img, 255 - img, img // 2]).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue(), y


def _rows(ks) -> dict[str, list]:
    cols = {"photo": [], "speech": [], "digit": []}
    for k in ks:
        jpg, y = _jpg(k)
        cols["photo"].append(jpg)
        cols["speech"].append(wav_bytes(tone(y, seconds=1.0, rate=22050, seed=k), rate=22050))
        cols["digit"].append(y)
    return cols


def _dict_folder(path, n_train=40, n_val=10, n_test=10, **kw):
    """A DatasetDict: train, validation, test of RGB JPEGs + 22,050 Hz WAVs, ClassLabel digits."""
    a, b = n_train, n_train + n_val
    return write_dataset_dict(path, {"train": _rows(range(a)), "validation": _rows(range(a, b)),
                                     "test": _rows(range(b, b + n_test))}, FEATURES, **kw)


def _mcfg(path, **kw) -> ManifestDataConfig:
    return ManifestDataConfig(path=path, columns=COLUMNS, **kw)


# ---- the DatasetDict's splits, rows and cells ----------------------------------------------------------------

def test_a_datasetdicts_splits_are_kept_and_its_cells_read_as_their_files(tmp_path):
    """Every split keeps its rows (over several Arrow files of several record batches), in order; each cell is the
    file it holds, byte for byte, and the built dataset's samples are those files decoded."""
    folder = _dict_folder(tmp_path / "dd", 40, 10, 12, shards=2, batch_rows=7)
    c = check(folder, settings=None, columns=COLUMNS)
    assert not c.problems, c.problems
    assert {s: k["rows"] for s, k in c.counts().items()} == {"train": 40, "val": 10, "test": 12}
    assert c.split.tolist() == [0] * 40 + [1] * 10 + [2] * 12  # not re-split
    assert c.specs["teacher"].kind == "image" and c.specs["teacher"].channels == 3
    assert c.specs["student"].kind == "audio"
    assert any("resampled to 16000 Hz" in n and "from 22050" in n for n in c.notes), c.notes
    f = hf.Folder.open(folder, COLUMNS)
    rows, _ = f.rows()
    line, row = rows[45]  # validation row 5: the second Arrow file of validation, its first batch
    assert line == 46 and row["split"] == "val" and row["label"] == WORDS[_jpg(45)[1]]
    assert row["teacher"] == "validation/data-00001-of-00002.arrow#0/photo.jpg", row
    assert f.read(row["teacher"]) == _jpg(45)[0]
    assert f.read(row["student"]) == _rows([45])["speech"][0]
    out = build(_mcfg(folder), tmp_path / "cache")
    store = Store(out)  # the dataset on disk holds each cell's bytes as they are: JPEG stays JPEG, WAV stays WAV
    assert store.read(45, "image") == _jpg(45)[0] and store.read(45, "audio") == _rows([45])["speech"][0]
    ds = load_dataset(out)
    assert ds.split.tolist() == c.split.tolist() and ds.class_names == sorted(WORDS)
    assert [ds.class_names[y] for y in ds.y[40:50]] == [WORDS[_jpg(k)[1]] for k in range(40, 50)]
    streamed = load_dataset(out, in_memory=False)  # rows decoded from the store on demand: the same features
    np.testing.assert_allclose(streamed.x["image"][[3, 45, 61]], ds.x["image"][[3, 45, 61]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed.x["audio"][[3, 45, 61]], ds.x["audio"][[3, 45, 61]], rtol=1e-5, atol=1e-5)


def test_the_folder_is_read_in_place_without_a_copy_of_its_data(tmp_path):
    """The Arrow files are memory-mapped: opening the folder, listing its rows and reading every cell allocates
    (almost) nothing in Arrow's memory pool, though the folder holds megabytes; a cell read is one cell's bytes."""
    import pyarrow as pa

    big = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")  # noise: about 197 KB a cell
    cols = _rows(range(30))
    cols["photo"] = [buf.getvalue()] * 30
    folder = write_dataset_dict(tmp_path / "dd", {"train": cols, "validation": cols, "test": cols}, FEATURES,
                                batch_rows=8)
    size = sum(p.stat().st_size for p in folder.rglob("*.arrow"))
    assert size > 15e6
    before = pa.total_allocated_bytes()
    f = hf.Folder.open(folder, COLUMNS)
    rows, problems = f.rows()
    assert len(rows) == 90 and not problems
    read = sum(len(f.read(r[c])) for _, r in rows for c in ("teacher", "student"))
    assert read > 0.95 * size
    assert pa.total_allocated_bytes() - before < 256 * 1024, pa.total_allocated_bytes() - before


def test_a_dataset_with_a_split_column_an_array_column_and_unlabelled_rows(tmp_path):
    """One Dataset: its split column (``validation`` read as val), an Array2D student (a .npy per row, one shape
    per column) and ClassLabel's -1 rows as unlabelled training pairs; the columns found by their features."""
    n = 30
    feats = {"image": {"_type": "Image"}, "imu": {"shape": [4, 8], "dtype": "float32", "_type": "Array2D"},
             "label": {"names": list(WORDS[:3]), "_type": "ClassLabel"},
             "split": {"dtype": "string", "_type": "Value"}}
    rng = np.random.default_rng(0)
    cols = {"image": [_jpg(k)[0] for k in range(n)],
            "imu": [(rng.normal(size=(4, 8)) + k % 3).astype(np.float32).tolist() for k in range(n)],
            "label": [-1 if k in (3, 4) else k % 3 for k in range(n)],
            "split": ["train" if k < 18 else ("validation", "test")[k % 2] for k in range(n)]}
    folder = write_dataset(tmp_path / "one", cols, feats)
    c = check(folder, settings=None, columns={"student": "imu"})
    assert not c.problems, c.problems
    assert c.specs["student"].kind == "array" and c.specs["student"].shape == (4, 8)
    assert c.counts()["train"] == {"rows": 18, "labelled": 16, "unlabelled": 2}
    assert c.counts()["val"]["rows"] == 6 and c.counts()["test"]["rows"] == 6
    f = hf.Folder.open(folder, {"student": "imu"}, {"teacher": "image", "student": "array"})
    cell = f.rows()[0][7][1]["student"]
    assert cell == "data-00000-of-00001.arrow#7/imu.npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(f.read(cell))), np.asarray(cols["imu"][7], np.float32))
    ds = load_dataset(build(ManifestDataConfig(path=folder, student_modality="array", columns={"student": "imu"}),
                            tmp_path / "cache"))
    assert ds.y[3] == ds.y[4] == -1 and ds.x["array"].shape == (n, 1, 4, 8)  # a channel axis for the encoder


# ---- bad input: each a clear problem naming the row, the column and the cell; nothing written ----------------

def test_array_cells_of_another_shape_or_ragged_are_named_by_row(tmp_path):
    """A list column is an ``array`` column: one shape for every row (the manifest's per-row check), and a cell
    whose inner lists differ in length is no array at all."""
    feats = {"image": {"_type": "Image"},
             "imu": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"}, "_type": "List"},
             "label": {"names": ["a", "b"], "_type": "ClassLabel"}}
    imu = [[[0.5] * 3] * 2 for _ in range(9)]
    imu[4] = [[0.5] * 3] * 3  # shape (3, 3) among (2, 3)
    imu[6] = [[0.5] * 3, [0.5] * 2]  # ragged
    cols = {"image": [_jpg(k)[0] for k in range(9)], "imu": imu, "label": [k % 2 for k in range(9)]}
    folder = write_dataset_dict(tmp_path / "dd", {"train": cols, "validation": cols, "test": cols}, feats)
    msgs = [str(p) for p in check(folder, columns={"student": "imu"}).problems]
    assert "row 5, student: array shape (3, 3), but 21 other row(s) of the column hold (2, 3); every array of a " \
           "column has one shape (train/data-00000-of-00001.arrow#4/imu.npy)" in msgs, msgs
    assert "row 7, student: unreadable: the array cell is ragged or holds nulls: not one fixed shape of numbers " \
           "(train/data-00000-of-00001.arrow#6/imu.npy)" in msgs, msgs


def test_a_missing_column_lists_the_columns_found(tmp_path):
    folder = _dict_folder(tmp_path / "dd", 6, 3, 3)
    c = check(folder, columns={**COLUMNS, "teacher": "image"})
    msg = " | ".join(map(str, c.problems))
    assert "column 'image' (data.manifest.columns.teacher) is missing" in msg, msg
    assert "photo (Image), speech (Audio), digit (ClassLabel)" in msg, msg
    assert not c.rows  # nothing read past the mapping
    unmapped = hf.Folder.open(folder)  # unmapped: the one Image, the one Audio and the one ClassLabel column
    assert unmapped.columns == COLUMNS and not unmapped.problems, unmapped.problems


def test_a_column_of_the_wrong_feature_type_is_refused(tmp_path):
    feats = {**FEATURES, "caption": {"dtype": "string", "_type": "Value"}}
    cols = {**_rows(range(6)), "caption": ["a digit"] * 6}
    folder = write_dataset_dict(tmp_path / "dd", {"train": cols, "validation": cols, "test": cols}, feats)
    msgs = [str(p) for p in check(folder, columns={**COLUMNS, "teacher": "caption"}).problems]
    assert any(m.startswith("teacher: column 'caption' holds Value(string); the teacher needs an Image, Audio or "
                            "array feature") and "caption (Value(string))" in m for m in msgs), msgs
    cfg = ManifestDataConfig(path=folder, columns={**COLUMNS, "teacher": "speech", "student": "photo"})
    with pytest.raises(ManifestError, match=r"column 'speech' holds Audio; the teacher \(image\) needs an Image"):
        build(cfg, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    label = [str(p) for p in check(folder, columns={**COLUMNS, "label": "photo"}).problems]
    assert any("column 'photo' holds Image; a label is a ClassLabel, a string or an integer" in m for m in label)


@pytest.mark.parametrize("spoil", ["corrupt", "not_an_image", "null"])
def test_undecodable_image_bytes_name_the_row_column_and_cell_and_nothing_is_written(tmp_path, spoil):
    cols = _rows(range(8))
    good = cols["photo"][5]
    cols["photo"][5] = {"corrupt": good[:40] + b"\x00" * 200, "not_an_image": b"GIF89a" + good[6:],
                        "null": None}[spoil]
    folder = write_dataset_dict(tmp_path / "dd", {"train": cols, "validation": _rows(range(8, 11)),
                                                  "test": _rows(range(11, 14))}, FEATURES)
    cache = tmp_path / "cache"
    with pytest.raises(ManifestError) as e:
        build(_mcfg(folder), cache)
    text = str(e.value)
    assert "row 6, teacher:" in text, text  # rows count from 1: train row 5 is row 6
    cell = {"corrupt": "train/data-00000-of-00001.arrow#5/photo.jpg", "not_an_image": "#5/photo.gif",
            "null": ""}[spoil]
    assert cell in text, text
    why = {"corrupt": "image", "not_an_image": "unsupported file type", "null": "no file given"}[spoil]
    assert why in text.lower() if spoil == "corrupt" else why in text, text
    assert not cache.exists() or not any(cache.iterdir())  # no dataset, no partial file


def test_a_datasetdict_without_a_validation_split_and_a_folder_that_is_none(tmp_path):
    folder = write_dataset_dict(tmp_path / "dd", {"train": _rows(range(6)), "test": _rows(range(6, 9))}, FEATURES)
    msgs = " | ".join(map(str, check(folder, columns=COLUMNS).problems))
    assert "has the split(s) train, test but no validation" in msgs, msgs
    (tmp_path / "plain").mkdir()
    msgs = " | ".join(map(str, check(tmp_path / "plain").problems))
    assert "not a Hugging Face datasets folder" in msgs and "dataset_dict.json" in msgs, msgs
    odd = write_dataset_dict(tmp_path / "odd", {"train": _rows(range(3)), "extra": _rows(range(3))}, FEATURES)
    assert "'extra'" in " | ".join(map(str, check(odd, columns=COLUMNS).problems))


def test_a_classlabel_outside_its_names_and_a_label_spelled_twice(tmp_path):
    feats = {**FEATURES, "digit": {"dtype": "string", "_type": "Value"}}
    cols = _rows(range(12))
    cols["digit"] = [WORDS[y] for y in cols["digit"]]
    assert cols["digit"][0] == cols["digit"][10] == "zero"
    cols["digit"][10] = " Zero"
    folder = write_dataset_dict(tmp_path / "dd", {"train": cols, "validation": cols, "test": cols}, feats)
    msgs = [str(p) for p in check(folder, columns=COLUMNS).problems]
    assert "row 11, label: label 'Zero' differs from 'zero' (row 1) only in case or spacing; write one spelling " \
           "(they would be two classes)" in msgs, msgs
    out = write_dataset_dict(tmp_path / "dd2", {"train": {**_rows(range(3)), "digit": [0, 1, 12]},
                                                "validation": _rows(range(3)), "test": _rows(range(3))}, FEATURES)
    msgs = [str(p) for p in check(out, columns=COLUMNS).problems]
    assert any("row 3, label: label 12 is outside the ClassLabel's 10 names" in m for m in msgs), msgs


def test_fdkd_data_manifest_checks_a_folder_and_maps_columns(tmp_path):
    folder = _dict_folder(tmp_path / "dd", 20, 5, 5)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "manifest", str(folder), "--columns", "teacher=photo,student=speech"])
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "30 rows, no problems" in out, out
    assert "train 20 (20 labelled, 0 unlabelled); val 5" in out, out
    result = runner.invoke(app, ["data", "manifest", str(folder), "--columns", "teacher=photos", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert problems[0]["column"] == "teacher" and "photo (Image)" in problems[0]["message"], problems


# ---- end to end: a folder with image + audio columns through fdkd run ----------------------------------------

TINY = ["teacher.model.width=8", "teacher.model.depth=2", "teacher.optim.epochs=10", "distill.student.width=8",
        "distill.student.depth=2", "distill.optim.epochs=8", "distill.grad_norm_every=0", "threads=1",
        "validate.latency_repeats=1", "export.parity_batches=[1,7]", "distill.method=kd",
        "distill.augment.enabled=false", "quantize.calib_methods=[minmax]", "build.int8_method=minmax",
        "validate.gates.int8_max_acc_drop_pt=30", "validate.gates.int8_min_agree_pct=70",
        "validate.gates.fp16_max_acc_drop_pt=10"]


def test_fdkd_run_on_a_datasetdict_folder_of_images_and_audio(tmp_path):
    """RGB JPEG + 22,050 Hz WAV columns of a DatasetDict through ``fdkd run`` to a validated student; the run is
    named after the folder, and its dataset keeps the DatasetDict's splits."""
    folder = _dict_folder(tmp_path / "digits_hf", 120, 30, 30)
    sets = [f"runs_dir={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache", "data.source=manifest",
            f"data.manifest.path={folder}", "data.manifest.columns.teacher=photo",
            "data.manifest.columns.student=speech", "data.manifest.columns.label=digit", *TINY]
    result = CliRunner().invoke(app, ["run", *[a for s in sets for a in ("--set", s)]])
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "validation PASSED" in out, out[-3000:]
    run_dir = tmp_path / "runs" / "manifest-digits_hf"
    validation = json.loads((run_dir / "validation.json").read_text())
    acc = {e["name"]: e["metrics"]["accuracy"] for e in validation["artifacts"]}
    assert acc["student.pt"] > 0.3, acc  # 10 classes: chance is 0.1
    manifest_json = json.loads((run_dir / "manifest.json").read_text())
    ds = load_dataset(manifest_json["artifacts"]["dataset"]["path"])
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [120, 30, 30]
    assert manifest_json["class_names"] == sorted(WORDS)
