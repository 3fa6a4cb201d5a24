"""Student-modality preprocessing, in numpy only, shared by training and serving.

Stage: used by ``pipeline`` when it builds datasets and by ``serving`` when it answers a raw
request, so both apply the identical transform. Reads and writes no artifacts; every constant
that shapes the transform lives in a frontend (:class:`AudioFrontend`, :class:`ImageFrontend`,
:class:`DepthFrontend`, :class:`ArrayFrontend`: one per kind of data, ``FRONTENDS``) and goes into
the artifact manifest through ``to_dict()``. Each has ``fitted(train_raw)``: the same frontend with
its standardisation measured on raw training samples (per channel where there are channels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# float32 STFT frames per log-mel chunk (AudioFrontend.logmel): numpy's rfft of float32 frames peaks at about 5x
# their size, so a chunk costs ~60 MB at most (13 rows of 3 s clips, 40 of 1 s)
LOGMEL_CHUNK_BYTES = 8 << 20


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
        """Cut a 1-D clip to ``clip_samples``: a longer clip keeps its centre (the start dropped gets the odd
        sample), a shorter one is zero-padded at the end. Training data and the server cut alike."""
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if wave.shape[0] >= self.clip_samples:
            start = (wave.shape[0] - self.clip_samples + 1) // 2
            return wave[start : start + self.clip_samples]
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
        # chunks of rows whose [n, T, n_fft] frames stay within LOGMEL_CHUNK_BYTES (128 rows of 3 s clips took
        # ~250 MB of temporaries); rows are independent, so the chunking does not change a value
        step = max(1, min(128, LOGMEL_CHUNK_BYTES // (4 * self.frames * self.n_fft)))
        for start in range(0, len(waves), step):
            padded = np.pad(waves[start : start + step], ((0, 0), (pad, pad)), mode="reflect")
            spec = np.fft.rfft(padded[:, idx] * window, axis=-1)  # [n, T, n_fft/2+1]
            power = spec.real**2 + spec.imag**2
            mel = (power.reshape(-1, power.shape[-1]) @ fbank).reshape(*power.shape[:2], -1)
            out[start : start + step] = np.log(mel + self.log_floor).transpose(0, 2, 1)
        return out

    def fitted(self, train_waves: np.ndarray) -> AudioFrontend:
        """This frontend with the log-mel mean/std measured on training clips [N, samples]."""
        logmel = self.logmel(train_waves)
        return dataclasses.replace(self, mean=float(logmel.mean()), std=float(logmel.std() + 1e-8))

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        """Float waves [N, samples] in [-1, 1] -> standardised features [N, 1, n_mels, frames]."""
        feats = (self.logmel(waves) - self.mean) / self.std
        return feats[:, None].astype(np.float32)


Stat = float | tuple[float, ...]  # one value, or one per channel


def _per_channel(v: Stat, channels: int) -> np.ndarray:
    """A mean or std as [C, 1, 1] (a scalar applies to every channel)."""
    a = np.asarray(v, np.float32).reshape(-1)
    if a.size not in (1, channels):
        raise ValueError(f"{a.size} per-channel values for {channels} channel(s)")
    return np.broadcast_to(a, (channels,)).reshape(channels, 1, 1)


def _channel_stats(x: np.ndarray) -> tuple[Stat, Stat]:
    """Per-channel mean and std of [N, C, ...] float32, in float64 sums; one channel gives plain floats."""
    c = x.shape[1]
    if c == 1:  # the single-channel datasets' constants stay what they were before per-channel statistics
        return float(x.mean()), float(x.std() + 1e-8)
    flat = np.moveaxis(x, 1, 0).reshape(c, -1)
    mean = flat.mean(axis=1, dtype=np.float64)
    std = flat.std(axis=1, dtype=np.float64) + 1e-8
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass(frozen=True)
class ImageFrontend:
    """Grayscale or RGB image -> [C, H, W] float32 in [0, 1], then standardised per channel.

    ``mean``/``std``: one value, or one per channel (RGB datasets fit one per channel on the training split).
    """

    height: int = 8
    width: int = 8
    channels: int = 1
    max_value: float = 16.0  # sklearn digits are 0..16; 8-bit images use 255
    mean: Stat = 0.0
    std: Stat = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return {"kind": "image", **dataclasses.asdict(self)}

    def fitted(self, train_raw: np.ndarray) -> ImageFrontend:
        """This frontend with mean/std measured per channel on raw training pixels [N, C, H, W]."""
        mean, std = _channel_stats(np.asarray(train_raw, np.float32) / self.max_value)
        return dataclasses.replace(self, mean=mean, std=std)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Raw pixel arrays [N, C, H, W] (0..max_value) -> standardised float32."""
        x = np.array(images, dtype=np.float32)  # a copy: the arithmetic below runs in place, one array in memory
        np.divide(x, self.max_value, out=x)
        np.subtract(x, _per_channel(self.mean, self.channels), out=x)
        return np.divide(x, _per_channel(self.std, self.channels), out=x)


@dataclass(frozen=True)
class DepthFrontend:
    """A 16-bit depth map (levels 0..65535, 0 = no reading) -> metres (level x ``depth_scale``), standardised.

    Every level is kept: the raw uint16 map goes through float32 (exact up to 2**24) times the scale, with no
    8-bit step anywhere. ``depth_scale`` is metres per level (0.001: millimetre maps, as RealSense and Kinect
    write them).
    """

    height: int = 32
    width: int = 32
    depth_scale: float = 0.001
    mean: float = 0.0
    std: float = 1.0

    @property
    def channels(self) -> int:
        return 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.height, self.width)

    def to_dict(self) -> dict:
        return {"kind": "depth", **dataclasses.asdict(self)}

    def metres(self, levels: np.ndarray) -> np.ndarray:
        return np.asarray(levels, np.float32) * np.float32(self.depth_scale)

    def fitted(self, train_raw: np.ndarray) -> DepthFrontend:
        mean, std = _channel_stats(self.metres(train_raw))
        return dataclasses.replace(self, mean=mean, std=std)

    def __call__(self, levels: np.ndarray) -> np.ndarray:
        """uint16 levels [N, 1, H, W] -> standardised metres, float32."""
        return ((self.metres(levels) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)


def array_feature_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The [C, H, W] a ``.npy`` tensor of ``shape`` is fed as: (L,) -> (1, 1, L); (H, W) -> (1, H, W); (C, H, W)
    as it is. More axes are refused: the encoders are 2-D convolutions."""
    if len(shape) == 1:
        return (1, 1, shape[0])
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return tuple(shape)
    raise ValueError(f"an array of {len(shape)} axes {tuple(shape)}; fdkd takes 1, 2 or 3 axes ((L), (H, W) or "
                     "(C, H, W))")


@dataclass(frozen=True)
class ArrayFrontend:
    """A fixed-shape numeric tensor (``.npy``: IMU windows, radar cubes, precomputed features) -> [C, H, W]
    float32 (``array_feature_shape``), standardised per channel (the first axis of that form)."""

    shape: tuple[int, ...] = (1, 1, 1)
    dtype: str = "float32"  # the files' dtype: an upload of another is refused
    mean: Stat = 0.0
    std: Stat = 1.0

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return array_feature_shape(tuple(self.shape))

    @property
    def channels(self) -> int:
        return self.feature_shape[0]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return {"kind": "array", **d}

    def _as_features(self, arrays: np.ndarray) -> np.ndarray:
        x = np.asarray(arrays, np.float32)
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"array of shape {tuple(x.shape[1:])}, expected {tuple(self.shape)}")
        return x.reshape(len(x), *self.feature_shape)

    def fitted(self, train_raw: np.ndarray) -> ArrayFrontend:
        mean, std = _channel_stats(self._as_features(train_raw))
        return dataclasses.replace(self, mean=mean, std=std)

    def __call__(self, arrays: np.ndarray) -> np.ndarray:
        """Arrays [N, *shape] -> standardised float32 [N, C, H, W]."""
        x = self._as_features(arrays)
        c = self.channels
        return ((x - _per_channel(self.mean, c)) / _per_channel(self.std, c)).astype(np.float32)


Frontend = AudioFrontend | ImageFrontend | DepthFrontend | ArrayFrontend
FRONTENDS = {"audio_logmel": AudioFrontend, "image": ImageFrontend, "depth": DepthFrontend, "array": ArrayFrontend}


def frontend_from_dict(d: dict) -> Frontend:
    """Rebuild a frontend from its ``to_dict()`` form (as stored in a dataset or manifest)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in FRONTENDS:
        raise ValueError(f"unknown preprocessing kind {kind!r}; expected one of {sorted(FRONTENDS)}")
    for k in ("mean", "std", "shape"):  # JSON gives lists; a frozen dataclass wants hashable tuples
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    return FRONTENDS[kind](**d)


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
