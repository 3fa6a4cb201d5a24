"""On-the-fly augmentation of a student's training inputs: audio on the log-mel spectrogram of each batch
(``AudioAugmenter``), images and depth maps on their standardised pixels (``ImageAugmenter``, at the end).

Stage: used by ``fdkd.pipeline.distill`` for an audio student's **training** rows only. Validation
and test inputs, the teacher's input (so the teacher cache stays valid) and the dataset file are
never touched.

Where it runs, and why there: the dataset file stores raw 16 kHz waveforms, and loading turns
every row into a log-mel once (``fdkd.serving.preprocess``, the server's numpy code). Redoing the STFT
on augmented waveforms for every batch costs about as much as the student's own forward and
backward pass on this project's 2-core CI machine (measured: 100-200 ms per 64-clip batch, which
would double ``fdkd distill``, and ``fdkd run`` trains several candidates). Precomputing K
variants per clip at build time would fix the variety at K and grow the file K-fold. So every
transform here is the spectral-domain form of its waveform counterpart, applied to the cached
log-mel of the training rows (a few milliseconds per batch):

- **speed perturbation** by a factor a (resampling: tempo and pitch together): frame t reads
  frame t*a, and the frequency axis is scaled by a;
- **pitch shift** by s semitones (duration kept): the frequency axis scaled by 2**(s/12); each mel
  bin takes the power found at its centre frequency / factor (interpolated on the mel axis; this
  moves formants with the pitch, as vocal-tract-length perturbation does);
- **local warps** (a stand-in for accent: vowel lengths and formant positions that move unevenly):
  smooth random displacements of the frame and mel axes, a sinusoid of one or two half-periods
  over the clip, at most ``time_warp_frames`` frames and ``freq_warp_bins`` mel bins;
- **gain** in dB: the mel power multiplied by the gain (exact, the log floor included);
- **background noise** at a random SNR with a random spectral tilt (power ~ f**-tilt: white, pink,
  brown): its expected mel power (the filterbank applied to the tilt) with per-cell fluctuation,
  added to the mel power (speech and noise add in power up to a zero-mean cross term);
- **time and frequency masks** (SpecAugment) on the standardised features, masked cells set to
  0, the training mean.

Every draw comes from the augmenter's own seeded ``torch.Generator``: the same seed and the
same sequence of batches give identical tensors. An augmenter is called with a batch's dataset rows and their
clean standardised features (``aug(rows, x)``: the training loop reads them, from memory or streamed from the
on-disk dataset); it holds no dataset rows of its own, only the set of training row numbers, and refuses any
other row.
"""

from __future__ import annotations

import numpy as np
import torch

from fdkd.pipeline.config import AudioAugmentConfig, ImageAugmentConfig
from fdkd.serving.preprocess import AudioFrontend, DepthFrontend, ImageFrontend, hz_to_mel, mel_filterbank, mel_to_hz


def _uniform(gen: torch.Generator, n: int, bounds) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _warp(p: torch.Tensor, frame_pos: torch.Tensor, mel_pos: torch.Tensor) -> torch.Tensor:
    """p [B, M, T] resampled bilinearly at fractional frames [B, T] x mel bins [B, M], clamped at the edges."""
    n, m, t = p.shape
    gx = (2 * frame_pos / (t - 1) - 1)[:, None, :].expand(n, m, t)
    gy = (2 * mel_pos / (m - 1) - 1)[:, :, None].expand(n, m, t)
    grid = torch.stack([gx, gy], dim=-1)
    return torch.nn.functional.grid_sample(p[:, None], grid, mode="bilinear", padding_mode="border",
                                           align_corners=True)[:, 0]


class _TrainingRows:
    """The training rows an augmenter accepts (sorted row numbers: no feature is held)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.unique(np.asarray(rows, np.int64))
        if len(self.rows) != len(np.asarray(rows)):
            raise ValueError(f"{len(np.asarray(rows))} training rows given, {len(self.rows)} distinct row indices")

    def check(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` (the batch's features) as float32, after checking every row of ``rows`` is a training row."""
        r = np.asarray(rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else rows, np.int64).reshape(-1)
        pos = np.minimum(np.searchsorted(self.rows, r), max(len(self.rows) - 1, 0))
        bad = r[(self.rows[pos] != r) if len(self.rows) else np.ones(len(r), bool)]
        if len(bad):
            raise KeyError(f"row {int(bad[0])} is not a training row: the augmenter only sees training inputs")
        if len(x) != len(r):
            raise ValueError(f"{len(x)} feature rows for {len(r)} row numbers")
        return torch.as_tensor(x).float()


class AudioAugmenter:
    """Augmented, standardised student inputs [B, 1, n_mels, frames] for training rows.

    ``rows``: the dataset's training rows (their indices in the whole dataset); ``fe`` carries the mean/std the
    features were standardised with. Call it with a batch's dataset row indices and their standardised log-mel
    features [B, 1, n_mels, frames]; any other row (validation, test) raises ``KeyError``.
    """

    def __init__(self, rows: np.ndarray, fe: AudioFrontend, cfg: AudioAugmentConfig, seed: int) -> None:
        self.train = _TrainingRows(rows)
        self.fe, self.cfg = fe, cfg
        self.gen = torch.Generator().manual_seed(int(seed))
        fbank = mel_filterbank(fe.sample_rate, fe.n_fft, fe.n_mels, fe.f_min, fe.f_max)  # [n_mels, bins]
        self.fbank = torch.from_numpy(fbank.astype(np.float32))
        self.bin_hz = torch.linspace(0, fe.sample_rate / 2, fbank.shape[1]).clamp(min=fe.sample_rate / fe.n_fft)
        # effective number of FFT bins under each filter: how much averaging tames the noise's fluctuation
        self.noise_dof = torch.from_numpy((fbank.sum(1) ** 2 / (fbank**2).sum(1).clip(1e-12)).astype(np.float32))
        mel_lo, mel_hi = hz_to_mel(fe.f_min), hz_to_mel(fe.f_max)
        self.mel_step = (mel_hi - mel_lo) / (fe.n_mels + 1)
        self.mel_lo = mel_lo
        self.centre_hz = torch.from_numpy(mel_to_hz(mel_lo + self.mel_step * np.arange(1, fe.n_mels + 1))
                                          .astype(np.float32))

    def _draw(self, n: int, p: float, bounds, neutral: float) -> torch.Tensor:
        """Per clip: a value from ``bounds`` with probability ``p``, else ``neutral`` (draws made either way)."""
        on = torch.rand(n, generator=self.gen) < p
        return torch.where(on, _uniform(self.gen, n, bounds), torch.tensor(neutral))

    def __call__(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c, fe = self.cfg, self.fe
        logmel = self.train.check(rows, x)[:, 0] * fe.std + fe.mean
        p = (logmel.exp() - fe.log_floor).clamp(min=0)  # mel power [B, n_mels, frames]
        n, n_mels, frames = p.shape
        speed = self._draw(n, c.speed_p, c.speed, 1.0)
        pitch = 2 ** (self._draw(n, c.pitch_p, c.pitch_semitones, 0.0) / 12)
        gain_db = self._draw(n, c.gain_p, c.gain_db, 0.0)
        snr_db, tilt = _uniform(self.gen, n, c.noise_snr_db), _uniform(self.gen, n, c.noise_tilt)
        noisy = torch.rand(n, generator=self.gen) < c.noise_p
        # speed: frame t reads frame t * a; speed and pitch both scale the frequency axis
        frame_pos = torch.arange(frames, dtype=torch.float32)[None] * speed[:, None]
        src_hz = self.centre_hz[None] / (speed * pitch)[:, None]
        mel_pos = (2595.0 * torch.log10(1 + src_hz / 700.0) - self.mel_lo) / self.mel_step - 1
        warped = torch.rand(n, generator=self.gen) < c.warp_p
        frame_pos = frame_pos + self._smooth(n, frames, c.time_warp_frames) * warped[:, None]
        mel_pos = mel_pos + self._smooth(n, n_mels, c.freq_warp_bins) * warped[:, None]
        p = _warp(p, frame_pos, mel_pos) * (10 ** (gain_db / 10))[:, None, None]
        if noisy.any():
            p[noisy] = p[noisy] + self._noise(p[noisy], snr_db[noisy], tilt[noisy])
        x = (torch.log(p + fe.log_floor) - fe.mean) / fe.std
        x = self._masks(x, c.time_masks, c.time_mask_max, dim=2)
        x = self._masks(x, c.freq_masks, c.freq_mask_max, dim=1)
        return x[:, None].float()

    def _smooth(self, n: int, size: int, amplitude: float) -> torch.Tensor:
        """Smooth random displacements [n, size]: A * sin(pi * k * i / size + phase), |A| <= amplitude, k in {1, 2}.

        Monotone (no folding) while amplitude < size / (2 pi); the config keeps it well below.
        """
        amp = (2 * torch.rand(n, generator=self.gen) - 1) * amplitude
        k = torch.randint(1, 3, (n,), generator=self.gen).float()
        phase = torch.rand(n, generator=self.gen) * 2 * torch.pi
        i = torch.arange(size, dtype=torch.float32)[None]
        return amp[:, None] * torch.sin(torch.pi * k[:, None] * i / size + phase[:, None])

    def _noise(self, p: torch.Tensor, snr_db: torch.Tensor, tilt: torch.Tensor) -> torch.Tensor:
        """Mel power of noise with spectrum ~ f**-tilt, mean power = the clip's mean mel power / 10**(snr/10)."""
        n, n_mels, frames = p.shape
        shape = (self.bin_hz[None] ** -tilt[:, None]) @ self.fbank.T  # [n, n_mels]
        shape = shape / shape.mean(1, keepdim=True)
        level = p.mean((1, 2)) / 10 ** (snr_db / 10)
        spread = torch.randn(n, n_mels, frames, generator=self.gen) / self.noise_dof.sqrt()[None, :, None]
        return (level[:, None, None] * shape[:, :, None] * (1 + spread)).clamp(min=0)

    def _masks(self, x: torch.Tensor, count: int, max_width: int, dim: int) -> torch.Tensor:
        """``count`` masks per clip along ``dim`` (1 mel, 2 time), each 0..max_width cells wide."""
        if count == 0 or max_width == 0:
            return x
        n, size = x.shape[0], x.shape[dim]
        pos = torch.arange(size)[None]
        keep = torch.ones(n, size, dtype=torch.bool)
        for _ in range(count):
            width = torch.randint(0, min(max_width, size) + 1, (n,), generator=self.gen)
            start = (torch.rand(n, generator=self.gen) * (size - width + 1)).floor().long()
            keep &= ~((pos >= start[:, None]) & (pos < (start + width)[:, None]))
        shape = [n, 1, 1]
        shape[dim] = size
        return x * keep.view(shape)


class ImageAugmenter:
    """Augmented, standardised image or depth inputs [B, C, H, W] for training rows.

    Per image, from the augmenter's own seeded generator: a random resized crop (``crop_p``; the kept area a
    fraction ``crop_scale`` of the image, its aspect ``crop_ratio``, placed uniformly, sampled back to the full
    size), left-right and up-down flips (``hflip_p``, ``vflip_p``: off by default, since a mirrored digit or word
    is another thing) and, for RGB only, colour jitter (``jitter_p``: brightness, contrast, saturation factors
    drawn from 1 +- each, on the un-standardised [0, 1] pixels, clamped back into [0, 1]). Depth maps are
    resampled nearest-neighbour (a blend of a near and a far level is a depth where nothing is), images bilinearly.
    Called with a batch's dataset row indices and their standardised features; any other row than a training row
    raises ``KeyError``.
    """

    def __init__(self, rows: np.ndarray, fe: ImageFrontend | DepthFrontend, cfg: ImageAugmentConfig,
                 seed: int) -> None:
        self.train = _TrainingRows(rows)
        self.fe, self.cfg = fe, cfg
        self.mode = "nearest" if isinstance(fe, DepthFrontend) else "bilinear"
        self.rgb = isinstance(fe, ImageFrontend) and fe.channels == 3
        if self.rgb:
            self.mean = torch.tensor(np.broadcast_to(np.asarray(fe.mean, np.float32).reshape(-1), (3,)).copy())
            self.std = torch.tensor(np.broadcast_to(np.asarray(fe.std, np.float32).reshape(-1), (3,)).copy())
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c, g = self.cfg, self.gen
        x = self.train.check(rows, x)
        n = len(x)
        # crop: the kept area and aspect per image (log-uniform aspect), as half-extents in [-1, 1] coordinates
        area = _uniform(g, n, c.crop_scale)
        ratio = torch.exp(_uniform(g, n, (float(np.log(c.crop_ratio[0])), float(np.log(c.crop_ratio[1])))))
        cropped = torch.rand(n, generator=g) < c.crop_p
        sx = torch.where(cropped, torch.sqrt(area * ratio).clamp(max=1.0), torch.ones(n))
        sy = torch.where(cropped, torch.sqrt(area / ratio).clamp(max=1.0), torch.ones(n))
        cx = (2 * torch.rand(n, generator=g) - 1) * (1 - sx)
        cy = (2 * torch.rand(n, generator=g) - 1) * (1 - sy)
        hflip = torch.where(torch.rand(n, generator=g) < c.hflip_p, -1.0, 1.0)
        vflip = torch.where(torch.rand(n, generator=g) < c.vflip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sx * hflip, cx
        theta[:, 1, 1], theta[:, 1, 2] = sy * vflip, cy
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.rgb:
            x = self._jitter(x)
        return x.float()

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        c, g, n = self.cfg, self.gen, len(x)
        on = (torch.rand(n, generator=g) < c.jitter_p)[:, None, None, None]
        b = _uniform(g, n, (1 - c.brightness, 1 + c.brightness))[:, None, None, None]
        k = _uniform(g, n, (1 - c.contrast, 1 + c.contrast))[:, None, None, None]
        s = _uniform(g, n, (1 - c.saturation, 1 + c.saturation))[:, None, None, None]
        mean, std = self.mean[None, :, None, None], self.std[None, :, None, None]
        v = x * std + mean  # pixels in [0, 1]
        j = (v * b).clamp(0, 1)
        grey = (0.299 * j[:, 0] + 0.587 * j[:, 1] + 0.114 * j[:, 2])[:, None]  # ITU-R 601 luma, as Pillow's "L"
        j = ((j - grey.mean((2, 3), keepdim=True)) * k + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
        grey = (0.299 * j[:, 0] + 0.587 * j[:, 1] + 0.114 * j[:, 2])[:, None]
        j = ((j - grey) * s + grey).clamp(0, 1)
        return torch.where(on, (j - mean) / std, x)


def student_augmenter(cfg: AudioAugmentConfig, ds, modality: str, seed: int,
                      image_cfg: ImageAugmentConfig | None = None) -> AudioAugmenter | ImageAugmenter | None:
    """The augmenter for a student on ``modality`` of dataset ``ds``, or None (switched off, or a kind without
    one: arrays). ``cfg`` is the audio students' settings, ``image_cfg`` the image and depth students'."""
    fe = ds.frontends.get(modality)
    train = ds.indices("train")
    if isinstance(fe, (ImageFrontend, DepthFrontend)):
        if image_cfg is None or not image_cfg.enabled:
            return None
        return ImageAugmenter(train, fe, image_cfg, seed)
    if not cfg.enabled or not isinstance(fe, AudioFrontend):
        return None
    return AudioAugmenter(train, fe, cfg, seed)
