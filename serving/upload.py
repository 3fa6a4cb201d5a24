"""One uploaded file (``/v1/classify``) -> model features, within limits a hostile file cannot pass.

WAV: parsed by ``fdkd.serving.wav``; another sample rate than the model's is resampled as the training
data was (``fdkd.serving.wav.resample``, where scipy is installed; else refused); samples must be finite
and a float WAV's peak at most ``MAX_FLOAT_PEAK`` (full scale is 1: a peak near 1e20 would
overflow the float32 power spectrum into Inf/NaN features and NaN probabilities). Images: the
training data's own decoder and policy, ``fdkd.serving.image.decode_image`` (formats, pixel limit from
the header, PNG metadata budget against decompression bombs). Depth: a 16-bit single-channel PNG,
every level kept (``decode_depth``). Arrays: a ``.npy`` body of the dataset's shape and dtype
(``fdkd.serving.array``, no pickles). Every refusal
is an :class:`UploadError` whose message names the limit and echoes no more than a bounded
prefix of the input. Features are checked finite before they reach the model (for audio, by the
batcher, which computes them a batch at a time: ``fdkd.serving.batcher``).
"""

from __future__ import annotations

import numpy as np

from fdkd.serving import protocol
from fdkd.serving.preprocess import ArrayFrontend, AudioFrontend, DepthFrontend, Frontend, ImageFrontend
from fdkd.serving.wav import WavError, read_wav, resample

MAX_FLOAT_PEAK = 1000.0  # 60 dB above full scale: nothing real is louder
# student modality's kind (a name's part before "_": image_small is an image) -> the file types /v1/classify takes
# for it, as its OpenAPI document lists them
# (fdkd.serving.openapi reads this table: a modality added here is documented there). The server reads the bytes
# themselves (a WAV; an image in one of fdkd.serving.image.IMAGE_FORMATS), whatever the Content-Type says.
MEDIA_TYPES = {
    "audio": ("audio/wav", "audio/x-wav", "audio/wave"),
    "image": ("image/png", "image/jpeg", "image/bmp", "image/gif"),
    "depth": ("image/png",),  # a single-channel 16-bit PNG (fdkd.serving.image.decode_depth)
    "array": ("application/x-npy", "application/octet-stream"),  # a .npy (fdkd.serving.array)
}
MAX_RESAMPLE_SECONDS = 60  # a longer clip at another rate is refused before the filter runs over it
MESSAGE_LIMIT = 200


class UploadError(ValueError):
    """The upload cannot be turned into features; the message says why (bounded length)."""

    def __init__(self, message: str) -> None:
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT] + "..."
        super().__init__(message)


def features(frontend: Frontend, body: bytes) -> np.ndarray:
    """Raw file bytes -> [1, ...] float32 features with the run's own preprocessing constants."""
    if isinstance(frontend, AudioFrontend):
        x = frontend(clip(frontend, body))
    else:
        x = {ImageFrontend: _image, DepthFrontend: _depth, ArrayFrontend: _array}[type(frontend)](frontend, body)
    if not np.isfinite(x).all():
        raise UploadError("preprocessing produced non-finite features (is the file's signal in range?)")
    return x


def clip(fe: AudioFrontend, body: bytes) -> np.ndarray:
    """WAV bytes -> the checked clip, [1, clip_samples] float32, before the log-mel front end (which the
    server's batcher runs once per batch: ``fdkd.serving.batcher``)."""
    if not body:
        raise UploadError("empty body: send one WAV or image file")
    try:
        wav = read_wav(body)
    except WavError as e:
        raise UploadError(f"not a readable WAV file: {e}") from None
    if wav.samples.size == 0:
        raise UploadError("WAV holds no samples")
    mono = wav.mono()
    if not np.isfinite(mono).all():
        raise UploadError("WAV holds NaN or Inf samples")
    peak = float(np.abs(mono).max())
    if peak > MAX_FLOAT_PEAK:
        raise UploadError(f"WAV samples reach {peak:.3g}; full scale is 1 and at most {MAX_FLOAT_PEAK:g} is "
                          f"accepted")
    if wav.sample_rate != fe.sample_rate:
        if len(mono) > MAX_RESAMPLE_SECONDS * wav.sample_rate:
            raise UploadError(f"WAV of {len(mono) / wav.sample_rate:.1f} s at {wav.sample_rate} Hz: at most "
                              f"{MAX_RESAMPLE_SECONDS} s is resampled to this model's {fe.sample_rate} Hz")
        try:  # the training data's resampler: scipy's polyphase filter (scipy is not in the serve extra)
            mono = resample(mono, wav.sample_rate, fe.sample_rate)
        except ImportError:
            raise UploadError(f"WAV sample rate {wav.sample_rate} Hz; this model takes {fe.sample_rate} Hz (this "
                              "server has no scipy to resample: send audio at that rate)") from None
    return fe.fit_clip(mono)[None]


def _image(fe: ImageFrontend, body: bytes) -> np.ndarray:
    if not body:
        raise UploadError("empty body: send one WAV or image file")
    from fdkd.serving.image import ImageError, decode_image

    try:  # the decoder and limits the training data went through (formats, pixels, PNG metadata; 16-bit, alpha...)
        arr = decode_image(body, fe.channels, (fe.height, fe.width)).astype(np.float32)
    except ImageError as e:
        raise UploadError(str(e)) from None
    return fe(arr[None] / 255.0 * fe.max_value)


def _depth(fe: DepthFrontend, body: bytes) -> np.ndarray:
    if not body:
        raise UploadError("empty body: send one 16-bit depth PNG")
    from fdkd.serving.image import ImageError, decode_depth

    try:  # the training data's depth decoder: 16-bit single-channel PNG only, every level kept
        levels = decode_depth(body, (fe.height, fe.width))
    except ImageError as e:
        raise UploadError(str(e)) from None
    return fe(levels[None])


def _array(fe: ArrayFrontend, body: bytes) -> np.ndarray:
    if not body:
        raise UploadError("empty body: send one .npy array")
    from fdkd.serving.array import ArrayError, decode_npy

    try:  # the training data's reader: no pickles, real numbers, the dataset's shape and dtype
        arr = decode_npy(body, tuple(fe.shape), fe.dtype)
    except ArrayError as e:
        raise UploadError(str(e)) from None
    return fe(arr[None])


def preprocess(m, body: bytes) -> np.ndarray:
    """Raw file bytes -> [1, ...] features with the run's own preprocessing constants (``m.frontend``); a
    refusal is the protocol's ``BadRequest`` (400)."""
    try:
        return features(m.frontend, body)
    except UploadError as e:
        raise protocol.BadRequest(str(e)) from None


def prepare(m, body: bytes) -> tuple[np.ndarray, bool]:
    """What ``/v1/classify`` hands the batcher: (rows, raw). For an audio model the checked [1, samples] clip
    (raw: the batcher computes the log-mel of a whole batch's clips in one call), else :func:`preprocess`'s
    features."""
    if not isinstance(m.frontend, AudioFrontend):
        return preprocess(m, body), False
    try:
        return clip(m.frontend, body), True
    except UploadError as e:
        raise protocol.BadRequest(str(e)) from None
