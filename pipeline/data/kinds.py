"""The kinds of data a manifest column holds, and one pure decoder per kind: file bytes -> the raw sample array.

- ``image``: PNG/JPEG, grey or RGB (``fdkd.serving.image.decode_image``) -> uint8 [C, H, W];
- ``depth``: a single-channel 16-bit PNG at full precision (``decode_depth``) -> uint16 [1, H, W]; metres are
  level x ``depth_scale`` in the frontend;
- ``audio``: WAV at any rate and channel count (``fdkd.serving.wav``), mixed to mono, resampled to ``sample_rate``
  with scipy's polyphase filter, then cut to ``clip_samples`` by the crop policy below -> float32 [clip_samples];
- ``array``: a ``.npy`` tensor of one fixed shape (``fdkd.serving.array.decode_npy``) -> float32 [*shape].

Audio crop policy (``crop_clip``): a clip longer than ``clip_samples`` keeps its **centre** in evaluation (``rng``
None: validation, test, calibration, export parity, serving: ``AudioFrontend.fit_clip``, the start dropped gets the
odd sample) and a **random window** in training (``rng`` given: start uniform in [0, len - clip_samples], drawn from
the generator the loader seeds by (seed, epoch, row): ``fdkd.pipeline.data.rows.StreamRows.training``, so an epoch's
crops are the same whichever worker decodes the row). A shorter clip is zero-padded at the end in both.

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


def crop_clip(wave: np.ndarray, clip_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A mono clip cut to ``clip_samples`` by the crop policy (module docstring): centre when ``rng`` is None, a
    random window drawn from ``rng`` otherwise; a shorter clip zero-padded at the end."""
    wave = np.asarray(wave, np.float32).reshape(-1)
    if rng is None or wave.shape[0] <= clip_samples:
        return AudioFrontend(clip_samples=clip_samples).fit_clip(wave)
    start = int(rng.integers(0, wave.shape[0] - clip_samples + 1))
    return wave[start : start + clip_samples]


def _audio(raw: bytes, spec: ColumnSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    wav = read_wav(raw)
    if wav.samples.size == 0:
        raise WavError("WAV has no samples")
    mono = resample(wav.mono(), wav.sample_rate, spec.sample_rate)
    return crop_clip(mono, spec.clip_samples, rng)


DECODERS = {
    "image": lambda raw, spec, rng=None: decode_image(raw, spec.channels, spec.size),
    "depth": lambda raw, spec, rng=None: decode_depth(raw, spec.size),
    "audio": _audio,
    "array": lambda raw, spec, rng=None: decode_npy(raw, spec.shape, spec.dtype),
}


def decode(spec: ColumnSpec, raw: bytes, rng: np.random.Generator | None = None) -> np.ndarray:
    """One file's bytes -> its raw sample (see the module docstring for each kind's array); ``rng``: training's
    random audio crop (the crop policy), None for evaluation's centre. Other kinds ignore it."""
    return DECODERS[spec.kind](raw, spec, rng)


def spec_to_dict(spec: ColumnSpec) -> dict:
    """A JSON form of ``spec`` (``spec_from_dict`` reads it back)."""
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()}


def spec_from_dict(d: dict) -> ColumnSpec:
    return ColumnSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def frontend(spec: ColumnSpec) -> Frontend:
    """The column's frontend before its statistics are fitted (``fitted``)."""
    if spec.kind == "audio":
        return AudioFrontend(sample_rate=spec.sample_rate, clip_samples=spec.clip_samples)
    if spec.kind == "depth":
        return DepthFrontend(spec.size[0], spec.size[1], spec.depth_scale)
    if spec.kind == "array":
        return ArrayFrontend(tuple(spec.shape), spec.dtype or "float32")
    return ImageFrontend(spec.size[0], spec.size[1], spec.channels, 255.0)
