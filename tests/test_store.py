"""The on-disk dataset (fdkd.pipeline.data.store): same samples as the files, byte-identical rebuilds, half-written
builds never read, missing/truncated shards and bad files named, streaming statistics, the audio crop policy,
bounded memory, fsspec URLs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdkd.pipeline.config import ManifestDataConfig
from fdkd.pipeline.data import kinds
from fdkd.pipeline.data.dataset import load_dataset
from fdkd.pipeline.data.kinds import ColumnSpec
from fdkd.pipeline.data.manifest import build
from fdkd.pipeline.data.rows import StreamRows, chunks
from fdkd.pipeline.data.store import (
    BadSample,
    Column,
    RunningStats,
    Store,
    StoreError,
    StoreWriter,
    _pre_features,
    exists,
    npy_bytes,
    png_bytes,
    standardise,
)
from fdkd.serving.preprocess import ArrayFrontend, AudioFrontend, DepthFrontend, ImageFrontend, _channel_stats
from fdkd.serving.wav import read_wav
from tests.user_data import digit_image, tone, wav_bytes


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rgb(k: int) -> np.ndarray:
    img, _ = digit_image(k)
    return np.dstack([img, 255 - img, img // 2]).astype(np.uint8)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """24 pairs: RGB JPEGs (16x16) and WAVs of 1.5 s at 22,050 Hz (resampled, centre-cut to 1 s), 3 classes."""
    root = tmp_path_factory.mktemp("m")
    lines = ["teacher,student,label,split"]
    for k in range(24):
        (root / f"i{k}.jpg").write_bytes(_jpeg(_rgb(k)))
        (root / f"a{k}.wav").write_bytes(wav_bytes(tone(k % 3, 1.5, rate=22050, seed=k), 22050))
        lines.append(f"i{k}.jpg,a{k}.wav,c{k % 3},{('train', 'train', 'val', 'test')[k % 4]}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def _mcfg(path: Path) -> ManifestDataConfig:
    return ManifestDataConfig(path=path, teacher_modality="image", student_modality="audio", clip_seconds=1.0)


@pytest.fixture(scope="module")
def built(manifest, tmp_path_factory) -> Path:
    return build(_mcfg(manifest), tmp_path_factory.mktemp("cache"))


def test_the_store_gives_the_same_samples_as_the_files_decoded_directly(manifest, built):
    store = Store(built)
    assert len(store) == 24 and store.columns["image"].channels == 3
    for row in range(len(store)):
        for m, prefix, ext in (("image", "i", "jpg"), ("audio", "a", "wav")):
            raw = (manifest.parent / f"{prefix}{row}.{ext}").read_bytes()
            assert store.read(row, m) == raw  # the file's bytes as they are (JPEG stays JPEG)
            np.testing.assert_array_equal(store.raw(row, m), kinds.decode(store.columns[m], raw))
            assert store.member(row, m) == f"{store.index['key'][row]}.{m}.{ext}"
    # the shards are plain tar files in the WebDataset layout: <key>.<modality>.<ext> and <key>.cls, in row order
    import tarfile

    with tarfile.open(store.dir / "shards" / "shard-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["00000000.image.jpg", "00000000.audio.wav", "00000000.cls"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
        assert tar.extractfile(members[0]).read() == (manifest.parent / "i0.jpg").read_bytes()
    # features: dense and streamed agree, and are the frontends (fitted on the training split) over the raw samples
    dense, lazy = load_dataset(built, in_memory=True), load_dataset(built, in_memory=False)
    assert isinstance(lazy.x["audio"], StreamRows) and isinstance(dense.x["audio"], np.ndarray)
    for m in ("image", "audio"):
        for rows, x in chunks(lazy.x[m], size=5):
            np.testing.assert_array_equal(x, dense.x[m][rows])
    expect = dense.frontends["audio"](np.stack([store.raw(r, "audio") for r in range(24)]))
    np.testing.assert_array_equal(dense.x["audio"], expect)
    np.testing.assert_array_equal(dense.split, store.split)
    assert dense.class_names == ["c0", "c1", "c2"] and dense.path == built
    # auto: dense while the features fit data.memory_mb, streamed above it
    assert isinstance(load_dataset(built, "auto", memory_mb=1e-3).x["image"], StreamRows)
    assert isinstance(load_dataset(built, "auto").x["image"], np.ndarray)


def test_a_rebuild_is_byte_identical(manifest, built, tmp_path):
    again = build(_mcfg(manifest), tmp_path)
    assert again.parent.name == built.parent.name
    a, b = Store(built).record, Store(again).record
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    for rel in ("dataset.json", "index.npz", "shards/shard-000000.tar"):
        assert (built.parent / rel).read_bytes() == (again.parent / rel).read_bytes(), rel


def test_shards_are_what_tarfile_writes_byte_for_byte(tmp_path):
    import tarfile

    from fdkd.pipeline.data.store import _Shard, _tarinfo

    members = [("00000000.image.png", b"x" * 700), ("00000000.cls", b"3"), ("00000001.audio.wav", b""),
               (f"{'k' * 120}/deep.npy", bytes(range(256)) * 3), ("00000002.image.jpg", b"y" * 512)]
    shard = _Shard(tmp_path / "ours.tar")
    offsets = [shard.add(name, data) for name, data in members]
    shard.close()
    with open(tmp_path / "tarfile.tar", "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            t.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    ours = (tmp_path / "ours.tar").read_bytes()
    assert ours == (tmp_path / "tarfile.tar").read_bytes()
    for (_, data), off in zip(members, offsets, strict=True):
        assert ours[off : off + len(data)] == data


COLUMNS = {"image": Column(ColumnSpec("image", channels=3), "png", ImageFrontend(8, 8, 3, 255.0)),
           "array": Column(ColumnSpec("array", shape=(4, 5), dtype="float32"), "npy", ArrayFrontend((4, 5)))}


def _row(k: int) -> dict[str, bytes]:
    rng = np.random.default_rng(k)
    return {"image": png_bytes(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)),
            "array": npy_bytes(rng.standard_normal((4, 5)).astype(np.float32))}


def _write(final: Path, n: int, shard_bytes: int = 1 << 20) -> Path:
    with StoreWriter(final, COLUMNS, {"class_names": ["a", "b"]}, shard_bytes=shard_bytes) as w:
        for k in range(n):
            w.add(k % 2, (0, 0, 1, 2)[k % 4], _row(k))
        return w.close()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_build_that_raises_half_way_leaves_the_previous_dataset_intact(tmp_path):
    final = tmp_path / "ds"
    record = _write(final, 20)
    before = _snapshot(final)

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), StoreWriter(final, COLUMNS, {"class_names": ["a", "b"]}) as w:
        for k in range(30):
            if k == 7:
                raise Boom("killed after 7 rows")
            w.add(0, 0, _row(100 + k))
    assert _snapshot(final) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert len(Store(record)) == 20
    # and with nothing there before: nothing a later stage reads, no dataset.json anywhere
    with pytest.raises(Boom), StoreWriter(tmp_path / "new", COLUMNS, {"class_names": ["a"]}) as w:
        w.add(0, 0, _row(0))
        raise Boom("killed")
    assert not (tmp_path / "new").exists() and not exists(tmp_path / "new")
    with pytest.raises(ValueError, match="no dataset.json"):
        load_dataset(tmp_path / "new")


KILLED_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from tests.test_store import COLUMNS, _row
from fdkd.pipeline.data.store import StoreWriter
w = StoreWriter(Path(sys.argv[1]), COLUMNS, {"class_names": ["a", "b"]}, shard_bytes=4096)
for k in range(10_000):
    w.add(0, 0, _row(k))
    if k == 40:
        print("written", flush=True)
    time.sleep(0.001)
"""


def test_a_sigkilled_build_leaves_only_a_partial_folder_that_nothing_reads(tmp_path):
    final = tmp_path / "ds"
    _write(final, 12)
    before = _snapshot(final)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(final)], stdout=subprocess.PIPE, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout.readline().strip() == b"written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = tmp_path / f"ds.partial-{proc.pid}"
    assert partial.is_dir() and len(list((partial / "shards").iterdir())) > 1  # it was half-way, shards written
    assert not (partial / "dataset.json").exists()
    assert _snapshot(final) == before  # the complete dataset is as it was, and is what a reader opens
    assert len(load_dataset(final).y) == 12
    with pytest.raises(StoreError, match="no dataset.json"):
        Store(partial)
    _write(tmp_path / "ds", 12)  # the next build of the cache removes the stale partial folder
    assert not partial.exists() and _snapshot(final) == before


def test_a_missing_or_truncated_shard_is_an_error_naming_it(tmp_path):
    record = _write(tmp_path / "ds", 40, shard_bytes=8192)
    shards = sorted((tmp_path / "ds" / "shards").iterdir())
    assert len(shards) >= 3
    Store(record)  # complete: opens
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=f"shard {shards[1].name} holds {len(data) // 2} bytes.*truncated"):
        Store(record)
    with pytest.raises(ValueError, match=f"shard {shards[1].name}"):
        load_dataset(record)
    shards[1].write_bytes(data)
    shards[2].unlink()
    with pytest.raises(StoreError, match=f"shard {shards[2].name} is missing"):
        Store(record)


def test_a_shard_whose_bytes_changed_is_named_with_row_and_member_when_read(tmp_path):
    record = _write(tmp_path / "ds", 6)
    store = Store(record)
    shard = tmp_path / "ds" / "shards" / "shard-000000.tar"
    offset = int(store.index["offset_image"][3])
    data = bytearray(shard.read_bytes())
    data[offset : offset + 40] = b"\0" * 40  # the PNG's header gone, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"row 3 \(key 00000003\), shard shard-000000.tar, member "
                                         r"00000003.image.png"):
        Store(record).raw(3, "image")


def _depth_png_8bit() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _truncated_wav() -> bytes:
    return wav_bytes(tone(1, 0.5))[:-1000]


BAD = {  # column, spec, good bytes, bad bytes, what the error says
    "corrupt JPEG": (ColumnSpec("image", channels=3), "jpg", _jpeg(_rgb(1)), _jpeg(_rgb(2))[:200], "image"),
    "truncated WAV": (ColumnSpec("audio", clip_samples=8000), "wav", wav_bytes(tone(1, 0.5)), _truncated_wav(),
                      "truncated"),
    "npy of the wrong shape": (ColumnSpec("array", shape=(4, 5), dtype="float32"), "npy",
                               npy_bytes(np.zeros((4, 5), np.float32)), npy_bytes(np.zeros((5, 4), np.float32)),
                               "shape"),
    "npy of the wrong dtype": (ColumnSpec("array", shape=(4, 5), dtype="float32"), "npy",
                               npy_bytes(np.zeros((4, 5), np.float32)), npy_bytes(np.zeros((4, 5), np.float64)),
                               "dtype"),
    "8-bit PNG in a depth column": (ColumnSpec("depth"), "png", png_bytes(np.full((1, 8, 8), 900, np.uint16)),
                                    _depth_png_8bit(), "8-bit"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_an_error_naming_row_and_file_and_loses_nothing(tmp_path, case):
    spec, ext, good, bad, says = BAD[case]
    fe = {"image": ImageFrontend(16, 16, 3, 255.0), "audio": AudioFrontend(clip_samples=8000),
          "array": ArrayFrontend((4, 5)), "depth": DepthFrontend(8, 8)}[spec.kind]
    columns = {"x": Column(spec, ext, fe)}
    final = tmp_path / "ds"
    with StoreWriter(final, columns, {"class_names": ["a"]}) as w:
        for _ in range(3):
            w.add(0, 0, {"x": good})
        w.close()
    before = _snapshot(final)
    with pytest.raises(BadSample) as err, StoreWriter(final, columns, {"class_names": ["a"]}) as w:
        for k in range(5):
            w.add(0, 0, {"x": bad if k == 3 else good}, sources={"x": f"files/f{k}.{ext}"})
    msg = str(err.value)
    assert msg.startswith(f"row 3 (key 00000003), x file files/f3.{ext}: ") and says in msg, msg
    assert _snapshot(final) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_file_that_breaks_between_check_and_build_is_named_by_its_manifest_line(manifest, tmp_path):
    import shutil

    from fdkd.pipeline.data import manifest as mf

    src = tmp_path / "src"
    shutil.copytree(manifest.parent, src)
    calls = []
    real = mf.check

    def check_then_break(*a, **kw):  # the file goes bad after the check read it: the build's own decode finds it
        out = real(*a, **kw)
        calls.append(1)
        (src / "a5.wav").write_bytes(_truncated_wav())
        return out

    mf.check = check_then_break
    try:
        with pytest.raises(mf.ManifestError, match=r"line 7, student: unreadable since the check: .*truncated.* "
                                                   r"\(a5.wav\)"):
            build(_mcfg(src / "m.csv"), tmp_path / "cache")
    finally:
        mf.check = real
    assert calls and not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("channels", [1, 3])
def test_streaming_statistics_equal_the_dense_ones(channels):
    rng = np.random.default_rng(channels)
    scale = np.array([3.0, 0.5, 20.0][:channels]).reshape(1, channels, 1, 1)
    x = (rng.standard_normal((700, channels, 9, 7)) * scale + 100).astype(np.float32)
    stats = RunningStats()
    for lo in range(0, 700, 256):
        stats.add(x[lo : lo + 256])
    mean, std = stats.result()
    want_mean, want_std = _channel_stats(x)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(std, want_std, rtol=1e-5)


def test_standardising_kept_features_is_the_frontend_bit_for_bit():
    rng = np.random.default_rng(3)
    cases = [(AudioFrontend(mean=-4.2, std=2.5), rng.uniform(-0.5, 0.5, (5, 16000)).astype(np.float32)),
             (ImageFrontend(8, 8, 3, 255.0, (0.2, 0.5, 0.7), (0.3, 0.2, 0.1)), rng.integers(0, 256, (5, 3, 8, 8))),
             (ImageFrontend(8, 8, 1, 16.0, 0.31, 0.27), rng.integers(0, 17, (5, 1, 8, 8))),
             (DepthFrontend(8, 8, 0.001, 1.7, 0.4), rng.integers(0, 65536, (5, 1, 8, 8)).astype(np.uint16)),
             (ArrayFrontend((4, 5), "float32", 0.1, 2.0), rng.standard_normal((5, 4, 5)).astype(np.float32))]
    for fe, raw in cases:
        np.testing.assert_array_equal(standardise(fe, _pre_features(fe, raw)), fe(raw))


def test_the_fitted_frontends_equal_fitting_on_every_training_row_at_once(built):
    store = Store(built)
    train = np.flatnonzero(store.split == 0)
    for m, fe in store.frontends.items():
        unfitted = kinds.frontend(store.columns[m]) if m == "audio" else ImageFrontend(16, 16, 3, 255.0)
        want = unfitted.fitted(np.stack([store.raw(int(r), m) for r in train]))
        np.testing.assert_allclose(fe.mean, want.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fe.std, want.std, rtol=1e-5)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Store, list[np.ndarray]]:
    """Clips of 2 s, 1 s and 0.4 s (16 kHz) in a 1 s column."""
    waves = [np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in (32000, 16000, 6400)]
    with StoreWriter(tmp_path_factory.mktemp("c") / "ds", {"audio": Column(ColumnSpec("audio"), "wav",
                                                                            AudioFrontend())},
                     {"class_names": ["a"]}) as w:
        for k, wave in enumerate(waves):
            w.add(0, 0 if k < 2 else 1, {"audio": wav_bytes(wave)})
        record = w.close()
    return Store(record), [read_wav(wav_bytes(wave)).mono() for wave in waves]


def test_audio_crop_policy_centre_in_evaluation_seeded_random_window_in_training(clips):
    store, full = clips
    long, exact, short = full
    np.testing.assert_array_equal(store.raw(0, "audio"), long[8000:24000])  # evaluation: the centre
    np.testing.assert_array_equal(store.raw(1, "audio"), exact)
    np.testing.assert_array_equal(store.raw(2, "audio"), np.pad(short, (0, 9600)))  # shorter: zero-padded at the end
    starts = set()
    for seed in range(6):
        window = store.raw(0, "audio", np.random.default_rng(seed))
        start = int(np.flatnonzero(long == window[0])[0])
        np.testing.assert_array_equal(window, long[start : start + 16000])  # a window of the clip itself
        starts.add(start)
    assert len(starts) > 3  # random, not the centre every time
    np.testing.assert_array_equal(store.raw(2, "audio", np.random.default_rng(1)), np.pad(short, (0, 9600)))
    # the training view: crops seeded by (seed, epoch, row), whichever order or worker reads the rows
    x = StreamRows(store, "audio", store.frontends["audio"], store.feature_shape("audio"))
    ep0, ep0_again, ep1 = x.training(7, 0), x.training(7, 0), x.training(7, 1)
    np.testing.assert_array_equal(ep0[[2, 0]], ep0_again[[2, 0]][[0, 1]])
    np.testing.assert_array_equal(ep0[[0]], ep0_again.view([2, 1, 0])[[2]])
    want = store.frontends["audio"](store.raw(0, "audio", np.random.default_rng((7, 0, 0)))[None])
    np.testing.assert_array_equal(ep0[[0]], want)
    assert not np.array_equal(ep0[[0]], ep1[[0]])  # another epoch, another window
    np.testing.assert_array_equal(ep0[[1, 2]], x[[1, 2]])  # clips not longer than 1 s: the same in both
    np.testing.assert_array_equal(x[[0]], store.frontends["audio"](long[8000:24000][None]))


def _rgb_dataset(final: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    tiles = [png_bytes(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)) for _ in range(8)]
    columns = {"image": Column(ColumnSpec("image", channels=3), "png", ImageFrontend(64, 64, 3, 255.0))}
    with StoreWriter(final, columns, {"class_names": ["a"]}) as w:
        for k in range(n):
            w.add(0, 0, {"image": tiles[k % 8]})
        return w.close()


def test_the_loaders_memory_does_not_grow_with_the_number_of_rows(tmp_path):
    peaks = {}
    for n in (200, 1600):
        ds = load_dataset(_rgb_dataset(tmp_path / f"ds{n}", n), in_memory=False)
        x = ds.x["image"]
        tracemalloc.start()
        seen = 0
        for rows, feats in chunks(x, size=100):  # one chunk size for both: the peak is per chunk
            seen += len(rows)
            assert feats.shape[1:] == (3, 64, 64)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == n
    # 8x the rows: the peak is a chunk's features and the frontend's temporaries, not the dataset's
    assert peaks[1600] < 1.5 * peaks[200], peaks
    assert peaks[1600] < 0.5 * 1600 * 3 * 64 * 64 * 4, peaks  # under half of what the dense features would take


def test_a_batch_decodes_in_bounded_groups_with_the_numbers_of_one_pass(tmp_path, monkeypatch):
    """``x[rows]`` runs the frontend on groups of raw samples up to DECODE_BYTES: a batch's temporaries do not grow
    with its row count (340 rows of 3 s clips took ~500 MB per DataLoader worker at once), same values."""
    from fdkd.pipeline.data import rows as rows_mod

    x = load_dataset(_rgb_dataset(tmp_path / "ds", 240), in_memory=False).x["image"]
    one_pass = np.asarray(x.frontend(np.stack([x.source.raw(r, "image") for r in range(240)])), np.float32)
    monkeypatch.setattr(rows_mod, "DECODE_BYTES", 20 * 3 * 64 * 64)  # 20 raw rows per group (8 MB in use)
    peaks = {}
    for n in (30, 240):
        tracemalloc.start()
        got = x[np.arange(n)]
        peaks[n] = tracemalloc.get_traced_memory()[1] - got.nbytes  # beyond the batch's own output
        tracemalloc.stop()
        np.testing.assert_array_equal(got, one_pass[:n])
    assert peaks[240] < 1.5 * peaks[30], peaks  # a group's temporaries, not the batch's
    monkeypatch.setattr(rows_mod, "DECODE_BYTES", 1)  # one row per group
    np.testing.assert_array_equal(x[np.arange(50)], one_pass[:50])


def test_workers_are_forked_without_the_heap_a_data_build_freed():
    """``StreamRows.batches`` hands freed heap pages back before it forks workers (glibc keeps them resident, and
    every worker would map them). A subprocess frees 450 MB of 100 KB arrays, keeps every tenth."""
    script = """
import numpy as np
from fdkd.pipeline.data.rows import release_free_heap
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
a = [np.ones(100_000 // 8) for _ in range(5000)]
keep = a[::10]; del a
before = rss()
trimmed = release_free_heap()
print(before, rss(), int(trimmed))
"""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    before, after, trimmed = (int(v) for v in out)
    if not trimmed:
        pytest.skip("no glibc malloc_trim here (musl, macOS): the heap is the allocator's to return")
    assert before - after > 300, (before, after)  # most of the 450 MB freed is back with the OS


_HEAP_SCRIPT = """
import sys, numpy as np
from fdkd.pipeline.numerics import bound_heap
bounded = bound_heap() if sys.argv[1] == "1" else False
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
def in_heap(addr):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            return lo <= addr < hi
    return False
a = np.ones(6 << 17); del a  # one 6 MB buffer freed: glibc's dynamic threshold rises to 6 MB
before = rss()
b = np.ones(6 << 17)  # the next one of that size
inside = in_heap(b.ctypes.data)
keep = np.ones(64)  # a small allocation that outlives it
del b
print(int(bounded), int(inside), rss() - before)
"""


def _heap_run(bound: str, env: dict | None = None, first: str = "") -> tuple[int, int, int]:
    """``_HEAP_SCRIPT`` in a fresh interpreter, after ``first`` (more code); ``bound`` "1" calls ``bound_heap``."""
    out = subprocess.run([sys.executable, "-c", first + _HEAP_SCRIPT, bound], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return tuple(int(v) for v in out)


def test_bounded_heap_returns_a_freed_large_buffer_to_the_os():
    """``bound_heap`` (opening a streamed dataset calls it): a 6 MB buffer is its own mapping, gone from the process
    once freed. Without it glibc, having seen one such buffer freed, serves the next from the heap
    and keeps its 6 MB resident (how validation at 7,500 test rows grew past the same stage at 300)."""
    from fdkd.pipeline.numerics import glibc

    if glibc() is None or not Path("/proc/self/maps").exists():
        pytest.skip("glibc's allocator on Linux only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    _, inside, kept = _heap_run("0", env)
    assert inside == 1 and kept >= 5, (inside, kept)  # the default: in the heap, and still resident
    bounded, inside, kept = _heap_run("1", env)
    assert bounded == 1 and inside == 0 and kept <= 1, (bounded, inside, kept)
    bounded, inside, kept = _heap_run("1", env | {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)})  # the user's value wins
    assert bounded == 0 and inside == 1, (bounded, inside, kept)


def test_a_streamed_dataset_bounds_the_heap_and_a_dense_one_leaves_the_default(built):
    """``load_dataset``: streamed, the process's heap is bounded from then on (its stages walk the data in chunks);
    in memory, glibc's default stays (the bound costs a page fault per fresh page of every large buffer)."""
    from fdkd.pipeline.numerics import glibc

    if glibc() is None or not Path("/proc/self/maps").exists():
        pytest.skip("glibc's allocator on Linux only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    load = f"from fdkd.pipeline.data.dataset import load_dataset; load_dataset({str(built)!r}, in_memory={{}})\n"
    for in_memory, bounded in ((False, True), (True, False)):
        _, inside, kept = _heap_run("0", env, load.format(in_memory))
        assert (inside == 0) == bounded, (in_memory, inside, kept)


def test_onnx_runtime_without_a_memory_plan_gives_the_same_logits(tmp_path):
    """Validation and the INT8 gate search run ONNX Runtime without its per-shape memory plan (their memory then
    does not grow with the rows a split fills): the plan places buffers and computes nothing."""
    from fdkd.serving.runtime.onnx import OnnxRuntime
    from tests.test_user_data import _tiny_onnx

    _tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(300, 1, 8, 8)).astype(np.float32)
    planned, unplanned = OnnxRuntime(tmp_path / "m.onnx"), OnnxRuntime(tmp_path / "m.onnx", mem_pattern=False)
    assert planned.session.get_session_options().enable_mem_pattern
    assert not unplanned.session.get_session_options().enable_mem_pattern
    for rows in (x[:256], x[256:], x[:256]):  # the plan is made on a shape's first run and used from the second
        np.testing.assert_array_equal(planned(rows), unplanned(rows))


def test_log_mel_chunks_bound_their_temporaries_and_change_no_value(monkeypatch):
    from fdkd.serving import preprocess

    waves = (np.random.default_rng(0).standard_normal((70, 48000)) * 0.1).astype(np.float32)
    fe = AudioFrontend(clip_samples=48000)
    whole = fe.logmel(waves)  # 3 s clips: 13 rows per chunk at the default 8 MB
    for chunk_bytes in (1, 4 * fe.frames * fe.n_fft * 7):  # one row, seven rows per chunk
        monkeypatch.setattr(preprocess, "LOGMEL_CHUNK_BYTES", chunk_bytes)
        np.testing.assert_array_equal(fe.logmel(waves), whole)
    tracemalloc.start()
    fe.logmel(waves)
    small = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    monkeypatch.setattr(preprocess, "LOGMEL_CHUNK_BYTES", 1 << 40)  # every row in one chunk (128 at most)
    tracemalloc.start()
    fe.logmel(waves)
    big = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert small < 0.3 * big, (small, big)


def test_a_dataset_reads_through_fsspec(built):
    fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed: URL datasets need it")
    fs = fsspec.filesystem("memory")
    root = built.parent
    for p in root.rglob("*"):
        if p.is_file():
            fs.pipe(f"/fdkd-test/{p.relative_to(root)}", p.read_bytes())
    remote = Store("memory://fdkd-test")
    local = Store(built)
    assert len(remote) == len(local)
    for row in (0, 5, 23):
        assert remote.read(row, "image") == local.read(row, "image")
        np.testing.assert_array_equal(remote.raw(row, "audio"), local.raw(row, "audio"))
    streamed = load_dataset("memory://fdkd-test/dataset.json", in_memory=False)
    np.testing.assert_array_equal(streamed.x["audio"][[3, 4]], load_dataset(built).x["audio"][[3, 4]])
    assert Store(f"file://{built}").read(2, "audio") == local.read(2, "audio")
    fs.rm("/fdkd-test/shards/shard-000000.tar")
    with pytest.raises(StoreError, match="shard shard-000000.tar is missing"):
        Store("memory://fdkd-test")
    fs.rm("/fdkd-test", recursive=True)


def test_the_config_says_how_stages_hold_the_features(built):
    from fdkd.pipeline.config import ConfigError, load_config

    assert [load_config(None, [f"data.in_memory={v}"]).data.in_memory for v in ("auto", "true", "false")] == \
        ["auto", True, False]
    with pytest.raises(ConfigError, match="data.in_memory"):
        load_config(None, ["data.in_memory=sometimes"])
    with pytest.raises(ValueError, match="data.in_memory must be auto, true or false"):
        load_dataset(built, in_memory="sometimes")
