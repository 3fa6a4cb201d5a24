"""What every settings module of ``fdkd.pipeline.config`` shares: the strict base model, its error, range checks.

``_Strict`` forbids unknown keys and freezes every section, so a typo in a YAML file or a ``--set`` is an error
that names the key (``ConfigError``, raised by ``fdkd.pipeline.config.load_config``).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

KINDS = ("image", "depth", "audio", "array")  # the kinds of data (fdkd.pipeline.data.kinds)


def _modality(v: str) -> str:
    """A kind, optionally with ``_suffix`` to tell two inputs of one kind apart (``image_small``)."""
    if not re.fullmatch(r"[a-z]+(_[a-z0-9]+)?", v) or v.split("_", 1)[0] not in KINDS:
        raise ValueError(f"a modality is one of {', '.join(KINDS)}, optionally with a suffix that tells two inputs "
                         f"of one kind apart (image_small); got {v!r}")
    return v


# the name of one input of a pair: the key of its features in the dataset and of its teacher file
Modality = Annotated[str, AfterValidator(_modality)]


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file at fault."""


def set_path(tree: dict, key: str, value) -> None:
    """Set ``tree[a][b][c] = value`` for ``key`` "a.b.c", creating sections on the way."""
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"empty key segment in {key!r}")
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _ordered(v):
    """A (low, high) range."""
    if v[0] > v[1]:
        raise ValueError(f"range must be (low, high), got {v}")
    return v
