"""The built-in avdigits dataset loaded dense: the old one-``.npz`` reader against the store, in one process.

Builds (or finds) the main job's avdigits dataset (``fdkd.pipeline.data.store``), writes the same rows in the old
layout (one ``.npz`` of decoded raw arrays, as ``avdigits.build`` wrote it before the store), then times, alternating,
``OLD_READ`` (a copy of the removed ``fdkd.pipeline.data.dataset._read``: ``np.load`` + frontends fitted at load) and
``load_dataset(path, in_memory=True)`` (every row's files read from the shards, decoded, run through the fitted
frontends chunk by chunk into one preallocated array per modality). The memo is bypassed. Then a fresh build's
write step and the same process's first load, both ways, once (``time_writes``). Checks the features agree
to float rounding and prints a table, the command and the record appended to ``docs/records/store-load.jsonl``.

    .venv/bin/python -m bench.store.load_builtin --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.serving.preprocess import AudioFrontend, frontend_from_dict
from fdkd.serving.runtime.cpu_isa import cpu_model

RECORDS = Path("docs/records/store-load.jsonl")


def old_read(path: Path) -> dict[str, np.ndarray]:
    """The features as the one-.npz reader computed them (the removed ``dataset._read``, its arithmetic unchanged)."""
    z = np.load(path, allow_pickle=False)
    meta = json.loads(bytes(z["meta"]).decode())
    raw = {m: z[f"{m}_raw"] for m in meta["frontends"]}
    split = z["split"].astype(np.int8)
    train = split == 0
    x = {}
    for m in meta["frontends"]:
        fe = frontend_from_dict(meta["frontends"][m])
        if isinstance(fe, AudioFrontend):
            waves = raw[m].astype(np.float32)
            if raw[m].dtype == np.int16:
                waves /= 32768.0
            logmel = fe.logmel(waves)
            fe = dataclasses.replace(fe, mean=float(logmel[train].mean()), std=float(logmel[train].std() + 1e-8))
            x[m] = ((logmel - fe.mean) / fe.std)[:, None].astype(np.float32)
        else:
            fe = fe.fitted(raw[m][train])
            x[m] = fe(raw[m])
    return x


def write_old_npz(record: Path, out: Path) -> None:
    from fdkd.pipeline.data.store import Store

    store = Store(record)
    image = np.stack([store.raw(r, "image") for r in range(len(store))]).astype(np.uint8)
    audio = (np.stack([store.raw(r, "audio") for r in range(len(store))]) * 32768).round().astype(np.int16)
    unfitted = {m: dataclasses.replace(fe, mean=0.0, std=1.0).to_dict() for m, fe in store.frontends.items()}
    meta = {"frontends": unfitted, "class_names": store.meta["class_names"]}
    artifacts.save_npz(out, {"image_raw": image, "audio_raw": audio, "label": store.labels, "split": store.split,
                             "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)})


def time_writes(record: Path, out: Path) -> dict[str, float]:
    """A fresh build's write step and the same process's first load, both ways, from the same rows: the old
    ``save_npz`` of the raw arrays then ``old_read``, against the store as ``avdigits.build`` writes it (PNG and WAV
    encoding, tar shards, the log-mel of every row computed once for the statistics and kept as the load's memo)
    then ``load_dataset``. The eSpeak NG synthesis before it is the same in both and not timed."""
    import shutil

    from fdkd.pipeline.data import dataset
    from fdkd.pipeline.data.avdigits import WORDS
    from fdkd.pipeline.data.store import Column, Store, StoreWriter, png_bytes, wav16_bytes

    store = Store(record)
    image = np.stack([store.raw(r, "image") for r in range(len(store))]).astype(np.uint8)
    audio = (np.stack([store.raw(r, "audio") for r in range(len(store))]) * 32768).round().astype(np.int16)
    labels, split = store.labels, store.split
    unfitted = {m: dataclasses.replace(fe, mean=0.0, std=1.0) for m, fe in store.frontends.items()}
    meta = np.frombuffer(json.dumps({"frontends": {m: fe.to_dict() for m, fe in unfitted.items()}}).encode(),
                         np.uint8)
    t = time.perf_counter()
    artifacts.save_npz(out / "old.npz", {"image_raw": image, "audio_raw": audio, "label": labels, "split": split,
                                         "meta": meta})
    old_write = time.perf_counter() - t
    old_read(out / "old.npz")
    old_total = time.perf_counter() - t
    columns = {m: Column(store.columns[m], ext, unfitted[m]) for m, ext in (("image", "png"), ("audio", "wav"))}
    dataset._LAST = None
    t = time.perf_counter()
    with StoreWriter(out / "new", columns, {"class_names": list(WORDS)}, keep_features=True) as w:
        for k in range(len(labels)):
            w.add(int(labels[k]), int(split[k]), {"image": png_bytes(image[k]), "audio": wav16_bytes(audio[k], 16000)},
                  samples={"image": image[k], "audio": audio[k].astype(np.float32) / 32768.0})
        new_record = w.close()
    dataset.remember(new_record, w.features)
    new_write = time.perf_counter() - t
    dataset.load_dataset(new_record, in_memory=True)
    new_total = time.perf_counter() - t
    (out / "old.npz").unlink()
    shutil.rmtree(out / "new")
    return {"old: .npz write": old_write, "old: .npz write + first load": old_total,
            "store: write (encode, shards, log-mel of every row)": new_write,
            "store: write + first load (the memo)": new_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/data"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from fdkd.pipeline.config import load_config
    from fdkd.pipeline.data import avdigits, dataset

    cfg = load_config()
    load_before = os.getloadavg()[0]
    record = avdigits.build(cfg.data.avdigits, args.cache_dir)
    old = args.cache_dir / "store-load-old-layout.npz"
    write_old_npz(record, old)
    times: dict[str, list[float]] = {"old .npz _read": [], "store load_dataset (dense)": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        x_old = old_read(old)
        times["old .npz _read"].append(time.perf_counter() - t)
        dataset._LAST = None  # the memo would answer the second call
        t = time.perf_counter()
        ds = dataset.load_dataset(record, in_memory=True)
        times["store load_dataset (dense)"].append(time.perf_counter() - t)
    diff = {m: float(np.abs(ds.x[m] - x_old[m]).max()) for m in x_old}
    writes = time_writes(record, args.cache_dir)
    rows, old_bytes = len(ds.y), old.stat().st_size
    old.unlink()
    rec = {"bench": "store-load", "rows": rows, "cpu": cpu_model(), "python": platform.python_version(),
           "seconds": {k: [round(v, 3) for v in vs] for k, vs in times.items()}, "max_abs_feature_diff": diff,
           "write_seconds": {k: round(v, 3) for k, v in writes.items()},
           "store_bytes": sum(p.stat().st_size for p in Path(record).parent.rglob("*") if p.is_file()),
           "old_npz_bytes": old_bytes,
           "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    from bench.common import append_records

    append_records(RECORDS, [rec])
    print(f"| loader | best of {args.repeats} (s) | all (s) |\n|---|---|---|")
    for k, vs in times.items():
        print(f"| {k} | {min(vs):.2f} | {', '.join(f'{v:.2f}' for v in vs)} |")
    print("\n| fresh build, same process | seconds |\n|---|---|")
    for k, v in writes.items():
        print(f"| {k} | {v:.2f} |")
    print(f"rows {rows}; max |feature difference| {diff}; 1-minute load average {rec['loadavg_1min']} on "
          f"{os.cpu_count()} CPUs ({rec['cpu']})")
    print("command: .venv/bin/python -m bench.store.load_builtin --repeats", args.repeats)


if __name__ == "__main__":
    main()
