"""Tests' view of a dataset on disk as the arrays the old one-``.npz`` form held: its per-row arrays (label, split,
voice, ...) and every column's decoded raw samples as ``<modality>_raw`` (built-in clips as the int16 they were
written as) and ``meta`` (its JSON as bytes). Holds every sample in memory: for small test datasets only."""

from __future__ import annotations

import json

import numpy as np

from fdkd.pipeline.data.store import Store


def arrays(path, pcm16: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """``{name: array}``; the columns named in ``pcm16`` come back as int16 PCM (x 32768), the rest as decoded."""
    store = Store(path)
    out = dict(store.index)
    for m in store.columns:
        raw = np.stack([store.raw(r, m) for r in range(len(store))])
        out[f"{m}_raw"] = (raw * 32768).round().astype(np.int16) if m in pcm16 else raw
    out["meta"] = np.frombuffer(json.dumps(store.meta, sort_keys=True).encode(), np.uint8)  # as the .npz held it
    store.close()
    return out


def builtin(path) -> dict[str, np.ndarray]:
    """A built-in (avdigits, avblend) dataset's arrays: clips as int16."""
    return arrays(path, pcm16=("audio",))
