"""Student-modality preprocessing, in numpy only, shared by training and serving.

Stage: used by ``pipeline`` when it builds datasets and by ``serving`` when it answers a raw
request, so both apply the identical transform. Reads and writes no artifacts; every constant
that shapes the transform lives in :class:`AudioFrontend` / :class:`ImageFrontend` and goes into
the artifact manifest through ``to_dict()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class AudioFrontend:
    """Log-mel spectrogram of a fixed-length mono clip: [samples] -> [1, n_mels, frames].

    ``mean``/``std`` standardise the log-mel values; they are measured on the training split
    when a dataset is built and recorded with it.
    """

    sample_rate: int = 16000
    clip_samples: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 8000.0
    log_floor: float = 1e-6
    mean: float = 0.0
    std: float = 1.0

    @property
    def frames(self) -> int:
        return 1 + self.clip_samples // self.hop_length

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)

    def to_dict(self) -> dict:
        return {"kind": "audio_logmel", **dataclasses.asdict(self)}

    def fit_clip(self, wave: np.ndarray) -> np.ndarray:
        """Crop or zero-pad a 1-D clip to ``clip_samples``."""
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if wave.shape[0] >= self.clip_samples:
            return wave[: self.clip_samples]
        return np.pad(wave, (0, self.clip_samples - wave.shape[0]))

    def logmel(self, waves: np.ndarray) -> np.ndarray:
        """Un-standardised log-mel of float waves in [-1, 1]: [N, samples] -> [N, n_mels, frames]."""
        waves = np.asarray(waves, dtype=np.float32)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.shape[1] != self.clip_samples:
            raise ValueError(f"audio clip has {waves.shape[1]} samples, expected {self.clip_samples}")
        pad = self.n_fft // 2
        idx = np.arange(self.frames)[:, None] * self.hop_length + np.arange(self.n_fft)[None, :]
        window = _window(self.n_fft, self.win_length)
        # contiguous [bins, n_mels] and a 2-D product: numpy hands that to BLAS; a stacked product with the
        # transposed view ran its own loop, 30x slower (most of a dataset load's time)
        fbank = np.ascontiguousarray(mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min,
                                                     self.f_max).T)
        out = np.empty((len(waves), self.n_mels, self.frames), np.float32)
        for start in range(0, len(waves), 128):  # chunks keep the [N, T, n_fft] frames in cache
            padded = np.pad(waves[start : start + 128], ((0, 0), (pad, pad)), mode="reflect")
            spec = np.fft.rfft(padded[:, idx] * window, axis=-1)  # [n, T, n_fft/2+1]
            power = spec.real**2 + spec.imag**2
            mel = (power.reshape(-1, power.shape[-1]) @ fbank).reshape(*power.shape[:2], -1)
            out[start : start + 128] = np.log(mel + self.log_floor).transpose(0, 2, 1)
        return out

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        """Float waves [N, samples] in [-1, 1] -> standardised features [N, 1, n_mels, frames]."""
        feats = (self.logmel(waves) - self.mean) / self.std
        return feats[:, None].astype(np.float32)


@dataclass(frozen=True)
class ImageFrontend:
    """Grayscale or RGB image -> [C, H, W] float32 in [0, 1], then standardised."""

    height: int = 8
    width: int = 8
    channels: int = 1
    max_value: float = 16.0  # sklearn digits are 0..16; 8-bit images use 255
    mean: float = 0.0
    std: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return {"kind": "image", **dataclasses.asdict(self)}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Raw pixel arrays [N, C, H, W] (0..max_value) -> standardised float32."""
        x = np.asarray(images, dtype=np.float32) / self.max_value
        return ((x - self.mean) / self.std).astype(np.float32)


def frontend_from_dict(d: dict) -> AudioFrontend | ImageFrontend:
    """Rebuild a frontend from its ``to_dict()`` form (as stored in a dataset or manifest)."""
    d = dict(d)
    kind = d.pop("kind", None)
    table = {"audio_logmel": AudioFrontend, "image": ImageFrontend}
    if kind not in table:
        raise ValueError(f"unknown preprocessing kind {kind!r}; expected one of {sorted(table)}")
    return table[kind](**d)


@lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` centred in ``n_fft``."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(win, (left, n_fft - win_length - left)).astype(np.float32)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """HTK-scale triangular filters, [n_mels, n_fft/2+1], each normalised to unit area (Slaney)."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(rise, fall))
    fb *= (2.0 / (upper - lower))
    return fb.astype(np.float32)
