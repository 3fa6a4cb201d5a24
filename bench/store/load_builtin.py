"""The built-in avdigits dataset loaded dense: the old one-``.npz`` reader against the store, in one process.

Builds (or finds) the main job's avdigits dataset (``fdkd.pipeline.data.store``), writes the same rows in the old
layout (one ``.npz`` of decoded raw arrays, as ``avdigits.build`` wrote it before the store), then times, alternating,
``OLD_READ`` (a copy of the removed ``fdkd.pipeline.data.dataset._read``: ``np.load`` + frontends fitted at load) and
``load_dataset(path, in_memory=True)`` (every row's files read from the shards, decoded, run through the fitted
frontends chunk by chunk into one preallocated array per modality). The memo is bypassed. Checks the features agree
to float rounding and prints a table, the command and the record appended to ``docs/records/store-load.jsonl``.

    .venv/bin/python -m bench.store.load_builtin --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.serving.preprocess import AudioFrontend, frontend_from_dict

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/data"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from fdkd.pipeline.config import load_config
    from fdkd.pipeline.data import avdigits, dataset

    cfg = load_config()
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
    rows, old_bytes = len(ds.y), old.stat().st_size
    old.unlink()
    rec = {"bench": "store-load", "rows": rows, "cpu": platform.processor() or platform.machine(),
           "seconds": {k: [round(v, 3) for v in vs] for k, vs in times.items()}, "max_abs_feature_diff": diff,
           "store_bytes": sum(p.stat().st_size for p in Path(record).parent.rglob("*") if p.is_file()),
           "old_npz_bytes": old_bytes}
    from bench.common import append_records

    append_records(RECORDS, [rec])
    print(f"| loader | best of {args.repeats} (s) | all (s) |\n|---|---|---|")
    for k, vs in times.items():
        print(f"| {k} | {min(vs):.2f} | {', '.join(f'{v:.2f}' for v in vs)} |")
    print(f"rows {rows}; max |feature difference| {diff}")
    print("command: .venv/bin/python -m bench.store.load_builtin --repeats", args.repeats)


if __name__ == "__main__":
    main()
