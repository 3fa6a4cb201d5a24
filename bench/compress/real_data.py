"""A generated 224x224 image task paired with 3 s clips: the user manifest the real-student compression runs train on.

    python -m bench.compress.real_data /tmp/real-compress/pairs --pairs 1000 --classes 10

Class k's image is an RGB grating at orientation k x 180/classes degrees, its period, phase, colour and Gaussian window
(centre, size) drawn per image, under strong pixel noise: a random-init ResNet-18 learns it in a few epochs without
reaching 100 % on the test split, so an INT8 graph's accuracy delta can show. Class k's clip is a 3 s, 16 kHz tone at
300 + 150 k Hz in noise (what the audio teacher learns in an epoch, and the 3 s input of the built-in audio student).
Everything is seeded; the files are PNG and 16-bit PCM WAV written by PIL and ``struct``, listed twice: in
``image-teacher.csv`` (``teacher`` the image, ``student`` the clip: the audio student's run) and in
``audio-teacher.csv`` (the clip teaches the image student: the ResNet-18 and MobileNetV3 runs).
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

SIZE = 224
RATE = 16000


def grating(label: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [SIZE, SIZE, 3]: class ``label``'s oriented grating in a random window under noise."""
    theta = np.pi * label / classes + rng.normal(0, np.pi / classes / 6)
    period = rng.uniform(10, 28)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi))
    cy, cx = rng.uniform(0.25, 0.75, 2) * SIZE
    sigma = rng.uniform(0.2, 0.35) * SIZE
    window = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    colour = rng.uniform(0.3, 1.0, 3)
    img = 0.5 + 0.35 * (wave * window)[..., None] * colour + rng.normal(0, 0.12, (SIZE, SIZE, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def clip(label: int, rng: np.random.Generator, seconds: float = 3.0) -> bytes:
    """A 16-bit mono WAV: class ``label``'s tone in noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t + rng.uniform(0, 6.28)) + rng.normal(0, 0.1, len(t))
    payload = np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
            + b"data" + struct.pack("<I", len(payload)) + payload)


def make(folder: Path, pairs: int, classes: int, seed: int = 0) -> Path:
    """Write ``pairs`` image/clip pairs (classes in turn) and both manifests into ``folder``; returns the folder.
    Existing complete manifests are kept (the files are deterministic)."""
    from PIL import Image

    csvs = {"image-teacher.csv": "img{i}.png,clip{i}.wav", "audio-teacher.csv": "clip{i}.wav,img{i}.png"}
    if all((folder / c).exists() and len((folder / c).read_text().splitlines()) == pairs + 1 for c in csvs):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(pairs):
        y = i % classes
        Image.fromarray(grating(y, classes, rng)).save(folder / f"img{i}.png")
        (folder / f"clip{i}.wav").write_bytes(clip(y, rng))
    for name, row in csvs.items():  # the CSVs last: a killed build leaves none that names missing files
        lines = ["teacher,student,label"] + [row.format(i=i) + f",class{i % classes}" for i in range(pairs)]
        tmp = folder / (name + ".partial")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(folder / name)
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args(argv)
    print(make(args.folder, args.pairs, args.classes))


if __name__ == "__main__":
    main()
