"""Hugging Face ``datasets`` folders for the tests, written with pyarrow in the layout ``save_to_disk`` writes.

``datasets`` itself is not a test dependency (about 75 MB beyond pyarrow, and writing Audio through it needs torch
and torchcodec), so this writes what ``Dataset.save_to_disk`` (datasets 5.2.0) writes, byte for byte in layout:
``data-0000k-of-0000n.arrow`` in Arrow's IPC stream format with the features in the schema's ``huggingface``
metadata, ``state.json`` (``_data_files`` in order, ``_fingerprint``, format fields) and ``dataset_info.json``
(``features``); a ``DatasetDict`` adds ``dataset_dict.json`` (``{"splits": [...]}``) over one such folder per
split. Image and Audio cells are ``{bytes, path}`` structs, ``Array2D`` a list of lists tagged with the extension
name ``datasets`` registers, ``List(Value(dtype), length=n)`` a fixed-size list.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _arrow_type(feature: dict):
    import pyarrow as pa

    t = feature["_type"]
    if t in ("Image", "Audio"):
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if t == "ClassLabel":
        return pa.int64()
    if t == "Value":
        return pa.from_numpy_dtype(np.dtype(feature["dtype"])) if feature["dtype"] not in (
            "string", "binary") else {"string": pa.string(), "binary": pa.binary()}[feature["dtype"]]
    if t == "Array2D":
        return pa.list_(pa.list_(pa.from_numpy_dtype(np.dtype(feature["dtype"]))))
    if t == "List":
        inner = _arrow_type(feature["feature"])
        return pa.list_(inner, feature.get("length", -1))
    raise ValueError(t)


def _field(name: str, feature: dict):
    import pyarrow as pa

    meta = None
    if feature["_type"] == "Array2D":
        meta = {"ARROW:extension:name": "datasets.features.features.Array2DExtensionType",
                "ARROW:extension:metadata": json.dumps([list(feature["shape"]), feature["dtype"]])}
    return pa.field(name, _arrow_type(feature), metadata=meta)


def write_dataset(folder: Path, columns: dict[str, list], features: dict[str, dict], shards: int = 1,
                  batch_rows: int | None = None) -> Path:
    """One ``Dataset`` as ``save_to_disk`` writes it: ``columns`` (name -> one value per row: bytes for Image/Audio
    (None for a null cell), ints for ClassLabel, nested lists for arrays) in ``shards`` Arrow files of record
    batches of ``batch_rows``."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([_field(n, f) for n, f in features.items()],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    n = len(next(iter(columns.values())))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    files = []
    for k in range(shards):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        arrays = []
        for col, f in features.items():
            values = columns[col][bounds[k]:bounds[k + 1]]
            if f["_type"] in ("Image", "Audio"):
                values = [None if v is None else {"bytes": v, "path": None} for v in values]
            arrays.append(pa.array(values, type=schema.field(col).type))
        table = pa.Table.from_arrays(arrays, schema=schema)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in table.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
        files.append({"filename": name})
    state = {"_data_files": files, "_fingerprint": "0123456789abcdef", "_format_columns": list(features),
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return folder


def write_dataset_dict(folder: Path, splits: dict[str, dict[str, list]], features: dict[str, dict],
                       **kw) -> Path:
    """A ``DatasetDict``: ``dataset_dict.json`` and one ``Dataset`` folder per split, in the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, columns in splits.items():
        write_dataset(folder / name, columns, features, **kw)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder
