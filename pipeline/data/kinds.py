"""The kinds of data a manifest column holds, and one pure decoder per kind: file bytes -> the raw sample array.

- ``image``: PNG/JPEG, grey or RGB (``fdkd.serving.image.decode_image``) -> uint8 [C, H, W];
- ``depth``: a single-channel 16-bit PNG at full precision (``decode_depth``) -> uint16 [1, H, W]; metres are
  level x ``depth_scale`` in the frontend;
- ``audio``: WAV at any rate and channel count (``fdkd.serving.wav``), mixed to mono, resampled to ``sample_rate``
  with scipy's polyphase filter, then cut to ``clip_samples`` (``AudioFrontend.fit_clip``: a longer clip keeps its
  centre, a shorter one is zero-padded at the end) -> float32 [clip_samples];
- ``array``: a ``.npy`` tensor of one fixed shape (``fdkd.serving.array.decode_npy``) -> float32 [*shape].

A :class:`ColumnSpec` holds everything a decoder needs; ``decode(spec, raw)`` is what the dataset builder calls per
file, and what a streaming loader can call per sample. Every decoder raises a ``ValueError`` subclass naming the
fault; the caller adds the row and file. ``frontend(spec)`` is the (not yet fitted) frontend of the column's kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdkd.serving.array import decode_npy
from fdkd.serving.image import decode_depth, decode_image
from fdkd.serving.preprocess import ArrayFrontend, AudioFrontend, DepthFrontend, Frontend, ImageFrontend
from fdkd.serving.wav import WavError, read_wav, resample

KINDS = ("image", "depth", "audio", "array")
# file extension -> the kinds a file of that type can be (an image column decides image or depth)
EXTENSIONS = {".wav": ("audio",), ".png": ("image", "depth"), ".jpg": ("image",), ".jpeg": ("image",),
              ".npy": ("array",)}


def kind_of(modality: str) -> str:
    """The kind of a modality name: ``image``, ``depth``, ``audio`` or ``array``, with an optional ``_suffix``
    that tells two columns of one kind apart (``image_small``)."""
    return modality.split("_", 1)[0]


def kinds_of_file(path: str) -> tuple[str, ...]:
    """The kinds a file can be by its extension; () for a type fdkd does not read."""
    return EXTENSIONS.get(Path(path).suffix.lower(), ())


@dataclass(frozen=True)
class ColumnSpec:
    """How one column's files become samples: its kind and the settings that kind uses."""

    kind: str
    size: tuple[int, int] | None = None  # image, depth: (height, width)
    channels: int = 1  # image: 1 grey, 3 RGB
    sample_rate: int = 16000  # audio
    clip_samples: int = 16000  # audio
    depth_scale: float = 0.001  # depth: metres per level
    shape: tuple[int, ...] | None = None  # array
    dtype: str | None = None  # array: a numpy dtype name


def _audio(raw: bytes, spec: ColumnSpec) -> np.ndarray:
    wav = read_wav(raw)
    if wav.samples.size == 0:
        raise WavError("WAV has no samples")
    mono = resample(wav.mono(), wav.sample_rate, spec.sample_rate)
    return AudioFrontend(sample_rate=spec.sample_rate, clip_samples=spec.clip_samples).fit_clip(mono)


DECODERS = {
    "image": lambda raw, spec: decode_image(raw, spec.channels, spec.size),
    "depth": lambda raw, spec: decode_depth(raw, spec.size),
    "audio": _audio,
    "array": lambda raw, spec: decode_npy(raw, spec.shape, spec.dtype),
}


def decode(spec: ColumnSpec, raw: bytes) -> np.ndarray:
    """One file's bytes -> its raw sample (see the module docstring for each kind's array)."""
    return DECODERS[spec.kind](raw, spec)


def frontend(spec: ColumnSpec) -> Frontend:
    """The column's frontend before its statistics are fitted (``fitted``)."""
    if spec.kind == "audio":
        return AudioFrontend(sample_rate=spec.sample_rate, clip_samples=spec.clip_samples)
    if spec.kind == "depth":
        return DepthFrontend(spec.size[0], spec.size[1], spec.depth_scale)
    if spec.kind == "array":
        return ArrayFrontend(tuple(spec.shape), spec.dtype or "float32")
    return ImageFrontend(spec.size[0], spec.size[1], spec.channels, 255.0)
