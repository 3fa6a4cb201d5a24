"""Generated real-size pairs for ``bench.data.scale``: RGB JPEG + mono 16-bit WAV, or RGB JPEG + 16-bit depth PNG.

Each pair is a class-dependent signal plus noise, so a teacher learns something in one epoch and the files cost
what real ones cost to decode (JPEG entropy from the noise, a full-length WAV at 44.1 kHz):

- image: a sinusoidal grating whose orientation and spatial frequency follow the class, tinted with the class's
  colour, plus Gaussian pixel noise; JPEG at quality 90;
- audio: two tones at class-dependent frequencies with a random phase and a slow amplitude envelope, plus white
  noise at a random SNR; mono 16-bit PCM WAV (Python's ``wave``: fixed headers);
- depth: a tilted plane (millimetres, 0.5-6 m) whose tilt direction follows the class, a class-placed box, and
  sensor noise; single-channel 16-bit PNG (every level used, not 8 bits scaled).

Row ``i`` is drawn from ``numpy.random.default_rng((seed, i))`` and its label is ``i % shape.classes``, so every file is
the same whichever process writes it, in any order; PIL's JPEG/PNG encoders and ``wave`` are deterministic for a
given build. ``write_pairs`` writes the files and then, last and atomically, the CSV manifest
(``teacher,student,label``; fdkd draws the split): a folder with its manifest is complete.
"""

from __future__ import annotations

import io
import os
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "pairs.csv"
CLASSES = 10
# one tint per class (RGB, 0..1): the colour alone separates most classes, the grating the rest
_TINTS = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0], [1.0, 1.0, 0.3], [1.0, 0.3, 1.0],
                   [0.3, 1.0, 1.0], [0.9, 0.6, 0.2], [0.5, 0.5, 0.9], [0.6, 0.9, 0.5], [0.8, 0.8, 0.8]])


@dataclass(frozen=True)
class Shape:
    """What one pair's files are: image side, clip length and rate, and which student kind."""

    size: int = 224
    seconds: float = 3.0
    rate: int = 44100
    student: str = "audio"  # audio: WAV; depth: 16-bit PNG
    classes: int = CLASSES


def image(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the class's grating and tint plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * label / CLASSES + rng.normal(0, 0.08)
    freq = 3 + (label % 5) * 2
    wave_ = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    rgb = wave_[..., None] * _TINTS[label % len(_TINTS)] * 200 + 20
    rgb += rng.normal(0, 25, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def audio(label: int, rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """int16 [seconds * rate]: two class tones under a slow envelope plus white noise at 0-20 dB SNR."""
    t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
    f0 = 220.0 * 2 ** (label / 6)  # two semitones apart per class: 220-698 Hz
    sig = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6.3)) + 0.5 * np.sin(2 * np.pi * 2.5 * f0 * t)
    sig *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 6.3))
    snr = 10 ** (rng.uniform(0, 20) / 20)
    sig = sig / np.abs(sig).max() + rng.normal(0, 1 / snr / 3, t.shape)
    return np.clip(sig / np.abs(sig).max() * 0.8 * 32767, -32768, 32767).astype(np.int16)


def depth(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint16 [size, size] millimetres: a tilted plane (tilt direction by class), a box placed by class, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = 2 * np.pi * label / CLASSES
    d = 2500 + 2000 * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)) + rng.normal(0, 100)
    cy, cx = int(size * (0.25 + 0.5 * (label // 5))), int(size * (0.1 + 0.8 * (label % 5) / 4))
    h = max(1, size // 6)
    d[max(0, cy - h):cy + h, max(0, cx - h):cx + h] -= 800
    d += rng.normal(0, 8, d.shape)  # sensor noise in millimetres: uses the low bits a 8-bit map would lose
    return np.clip(d, 500, 6000).astype(np.uint16)


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png16(levels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, "PNG")  # uint16 [H, W] -> mode I;16: a 16-bit grey PNG
    return buf.getvalue()


def wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def pair_files(i: int, seed: int, shape: Shape) -> tuple[int, bytes, bytes]:
    """Row ``i``'s label, teacher file bytes (JPEG) and student file bytes (WAV or 16-bit PNG)."""
    rng = np.random.default_rng((seed, i))
    label = i % shape.classes
    teacher = jpeg(image(label, rng, shape.size))
    if shape.student == "depth":
        student = png16(depth(label, rng, shape.size))
    else:
        student = wav(audio(label, rng, shape.seconds, shape.rate), shape.rate)
    return label, teacher, student


def student_ext(shape: Shape) -> str:
    return ".png" if shape.student == "depth" else ".wav"


def _write_range(root: str, lo: int, hi: int, seed: int, shape: Shape) -> int:
    root_p, ext = Path(root), student_ext(shape)
    written = 0
    for i in range(lo, hi):
        t, s = root_p / "teacher" / f"{i:06d}.jpg", root_p / "student" / f"{i:06d}{ext}"
        if t.exists() and s.exists():  # a resumed generation: files are a pure function of (seed, i)
            continue
        _, tb, sb = pair_files(i, seed, shape)
        for path, data in ((t, tb), (s, sb)):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        written += 1
    return written


def write_pairs(root: Path, n: int, seed: int = 0, shape: Shape = Shape(), workers: int = 2) -> Path:
    """``n`` pairs under ``root`` (``teacher/``, ``student/``) and the manifest ``root/pairs.csv`` written last;
    a folder that already has its manifest is returned as it is. ``workers`` processes write row ranges."""
    manifest = root / MANIFEST
    if manifest.exists():
        return manifest
    (root / "teacher").mkdir(parents=True, exist_ok=True)
    (root / "student").mkdir(parents=True, exist_ok=True)
    step = 500
    ranges = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_range, str(root), lo, hi, seed, shape) for lo, hi in ranges]
            for f in futures:
                f.result()
    else:
        for lo, hi in ranges:
            _write_range(str(root), lo, hi, seed, shape)
    ext = student_ext(shape)
    lines = ["teacher,student,label"] + [f"teacher/{i:06d}.jpg,student/{i:06d}{ext},c{i % shape.classes}"
                                         for i in range(n)]
    tmp = manifest.with_name(MANIFEST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, manifest)
    return manifest
