"""Real user-style files for the manifest tests: digit PNGs, tone WAVs in any encoding, manifests.

Images are scikit-learn's 8x8 digits scaled to 8 bits and upsampled to 16x16; each class's
clip is a tone at its own frequency plus noise, so a tiny student learns it in a few epochs.
WAVs are encoded here with ``struct`` (not with ``fdkd.serving.wav``), so the reader is checked
against an independent writer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def wav_bytes(x: np.ndarray, rate: int = 16000, fmt: str = "pcm16") -> bytes:
    """Samples in [-1, 1] ([frames] or [frames, channels]) as a WAV: pcm8/16/24/32, float32/64."""
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    channels = x.shape[1]
    tag, bits = (3, int(fmt[5:])) if fmt.startswith("float") else (1, int(fmt[3:]))
    flat = x.reshape(-1)
    if fmt == "pcm8":
        payload = np.clip(np.round(flat * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif fmt == "pcm16":
        payload = np.round(np.clip(flat, -1, 1) * 32767).astype("<i2").tobytes()
    elif fmt == "pcm24":
        v = np.round(np.clip(flat, -1, 1) * (2**23 - 1)).astype(np.int64) & 0xFFFFFF
        payload = np.stack([v & 0xFF, (v >> 8) & 0xFF, v >> 16], axis=1).astype(np.uint8).tobytes()
    elif fmt == "pcm32":
        payload = np.round(np.clip(flat, -1, 1) * (2**31 - 1)).astype("<i4").tobytes()
    else:
        payload = flat.astype("<f4" if bits == 32 else "<f8").tobytes()
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", len(payload)) + payload)


def tone(label: int, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, len(t))
    return 0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t) + noise


def digit_image(i: int) -> tuple[np.ndarray, int]:
    """The i-th sklearn digit as uint8 16x16 and its label."""
    from PIL import Image

    d = _digits()
    img = Image.fromarray((d.images[i] * 15.9).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
    return np.asarray(img), int(d.target[i])


_CACHE: dict = {}


def _digits():
    if "d" not in _CACHE:
        from sklearn.datasets import load_digits

        _CACHE["d"] = load_digits()
    return _CACHE["d"]


def make_pairs(folder: Path, n: int, classes: int = 10, name: str = "pairs.csv") -> Path:
    """``n`` image/WAV pairs of the first ``classes`` digit classes, labelled by name, and their CSV."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    d = _digits()
    idx = [i for i in range(len(d.target)) if d.target[i] < classes][:n]
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} digits of {classes} classes")
    lines = ["teacher,student,label"]
    for k, i in enumerate(idx):
        img, y = digit_image(i)
        Image.fromarray(img).save(folder / f"img{k}.png")
        (folder / f"clip{k}.wav").write_bytes(wav_bytes(tone(y, seed=k)))
        lines.append(f"img{k}.png,clip{k}.wav,{WORDS[y]}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path
