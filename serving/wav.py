"""Minimal WAV reader/writer in numpy (PCM 8/16/24/32-bit and IEEE float32/64).

Used by the data manifest check, the dataset loader and the server's raw-audio route, so that
float WAVs (which may hold NaN) are read the same way everywhere. Python's ``wave`` module
cannot read float WAVs, hence this file. ``resample`` brings a clip to another rate (scipy's polyphase
filter; scipy is imported only there).
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

import numpy as np

MAX_CHUNKS = 1024


class WavError(ValueError):
    """The bytes are not a WAV file this reader supports; the message says why."""


@dataclass(frozen=True)
class Wav:
    samples: np.ndarray  # float32 [frames, channels] scaled to [-1, 1] for PCM
    sample_rate: int
    channels: int
    format: str  # "pcm16", "float32", ...

    def mono(self) -> np.ndarray:
        return self.samples.mean(axis=1).astype(np.float32)


def read_wav(data: bytes) -> Wav:
    """Parse WAV bytes. Raises :class:`WavError` naming the fault."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    pos, fmt, payload, chunks = 12, None, None, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_CHUNKS:  # 16 MB of empty chunks would otherwise be millions of loop turns
            raise WavError(f"more than {MAX_CHUNKS} chunks")
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise WavError("fmt chunk too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag in the GUID
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if len(body) < size and size not in (0, 0xFFFFFFFF):  # 0 / 0xFFFFFFFF: a streaming writer's placeholder
                raise WavError(f"truncated: the data chunk declares {size} bytes but the file holds {len(body)}")
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise WavError("no fmt chunk")
    if payload is None:
        raise WavError("no data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1:
        raise WavError(f"invalid channel count {channels}")
    if rate <= 0:
        raise WavError(f"invalid sample rate {rate}")
    width = bits // 8
    if width == 0 or len(payload) % (width * channels):
        raise WavError(f"data chunk of {len(payload)} bytes is not a whole number of {bits}-bit frames")
    if tag == 1 and bits == 8:
        x = (np.frombuffer(payload, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and bits == 16:
        x = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 24:
        b = np.frombuffer(payload, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif tag == 1 and bits == 32:
        x = np.frombuffer(payload, "<i4").astype(np.float32) / float(1 << 31)
    elif tag == 3 and bits in (32, 64):
        x = np.frombuffer(payload, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise WavError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")
    name = f"pcm{bits}" if tag == 1 else f"float{bits}"
    return Wav(x.reshape(-1, channels), rate, channels, name)


def resample(x: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Mono float32 samples from ``rate_from`` to ``rate_to`` Hz with scipy's polyphase filter (``resample_poly``:
    a Kaiser-windowed FIR anti-aliasing low-pass at the lower rate's Nyquist frequency, up by p, down by q with
    p/q the reduced rate ratio). Same rate: returned as it is."""
    x = np.asarray(x, np.float32).reshape(-1)
    if rate_from == rate_to:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate_from), int(rate_to))
    up, down = int(rate_to) // g, int(rate_from) // g
    return resample_poly(x, up, down, window=_polyphase_filter(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _polyphase_filter(up: int, down: int) -> np.ndarray:
    """``resample_poly``'s own default low-pass (a Kaiser-windowed FIR, beta 5, 10 zero crossings per side at the
    lower rate's Nyquist frequency), designed once per rate pair: designing it on every call was a third of a 3 s
    clip's resampling time."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def write_wav(samples: np.ndarray, sample_rate: int, *, float32: bool = False) -> bytes:
    """Mono or [frames, channels] samples in [-1, 1] -> WAV bytes (PCM16, or float32)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    channels = x.shape[1]
    if float32:
        payload, tag, bits = x.astype("<f4").tobytes(), 3, 32
    else:
        payload, tag, bits = (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes(), 1, 16
    buf = io.BytesIO()
    block = channels * bits // 8
    buf.write(b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE")
    buf.write(b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, sample_rate, sample_rate * block, block, bits))
    buf.write(b"data" + struct.pack("<I", len(payload)) + payload)
    return buf.getvalue()
