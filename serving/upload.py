"""One uploaded file (``/v1/classify``) -> model features, within limits a hostile file cannot pass.

WAV: parsed by ``serving.wav``; the sample rate must match the model's; samples must be finite
and a float WAV's peak at most ``MAX_FLOAT_PEAK`` (full scale is 1: a peak near 1e20 would
overflow the float32 power spectrum into Inf/NaN features and NaN probabilities). Images: PNG,
JPEG, BMP or GIF only; at most ``MAX_IMAGE_PIXELS`` pixels, checked from the header before any
pixel is decoded; a PNG's compressed metadata (zTXt, iTXt, iCCP) is inflated with a budget of
``MAX_PNG_METADATA_BYTES`` in all before Pillow sees the file (decompression bombs). Every refusal
is an :class:`UploadError` whose message names the limit and echoes no more than a bounded
prefix of the input. Features are checked finite before they reach the model.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from serving.preprocess import AudioFrontend, ImageFrontend
from serving.wav import WavError, read_wav

MAX_FLOAT_PEAK = 1000.0  # 60 dB above full scale: nothing real is louder
MAX_IMAGE_PIXELS = 1 << 24  # 16.8 Mpx (4096 x 4096); the models take a few thousand
MAX_PNG_METADATA_BYTES = 1 << 20  # inflated zTXt/iTXt/iCCP, all chunks together
MAX_PNG_CHUNKS = 4096
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MESSAGE_LIMIT = 200


class UploadError(ValueError):
    """The upload cannot be turned into features; the message says why (bounded length)."""

    def __init__(self, message: str) -> None:
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT] + "..."
        super().__init__(message)


def features(frontend: AudioFrontend | ImageFrontend, body: bytes) -> np.ndarray:
    """Raw file bytes -> [1, ...] float32 features with the run's own preprocessing constants."""
    if not body:
        raise UploadError("empty body: send one WAV or image file")
    x = _audio(frontend, body) if isinstance(frontend, AudioFrontend) else _image(frontend, body)
    if not np.isfinite(x).all():
        raise UploadError("preprocessing produced non-finite features (is the file's signal in range?)")
    return x


def _audio(fe: AudioFrontend, body: bytes) -> np.ndarray:
    try:
        wav = read_wav(body)
    except WavError as e:
        raise UploadError(f"not a readable WAV file: {e}") from None
    if wav.sample_rate != fe.sample_rate:
        raise UploadError(f"WAV sample rate {wav.sample_rate} Hz; this model takes {fe.sample_rate} Hz")
    if wav.samples.size == 0:
        raise UploadError("WAV holds no samples")
    mono = wav.mono()
    if not np.isfinite(mono).all():
        raise UploadError("WAV holds NaN or Inf samples")
    peak = float(np.abs(mono).max())
    if peak > MAX_FLOAT_PEAK:
        raise UploadError(f"WAV samples reach {peak:.3g}; full scale is 1 and at most {MAX_FLOAT_PEAK:g} is "
                          f"accepted")
    return fe(fe.fit_clip(mono)[None])


def _image(fe: ImageFrontend, body: bytes) -> np.ndarray:
    from PIL import Image

    from serving.image import ImageError, decode_image

    if body.startswith(PNG_SIGNATURE):
        check_png(body)
    try:  # the header alone (Image.open is lazy): refuse bombs and foreign formats before any pixel is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body), formats=IMAGE_FORMATS) as im:
                _check_pixels(*im.size)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(f"image over the pixel limit (decompression bomb): {e}") from None
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... on hostile files
        raise UploadError(f"not a readable {'/'.join(IMAGE_FORMATS)} image: {type(e).__name__}: {e}") from None
    try:  # the decoder the training data went through (16-bit, alpha, EXIF, bilinear resize)
        arr = decode_image(body, fe.channels, (fe.height, fe.width)).astype(np.float32)
    except ImageError as e:
        raise UploadError(f"not a readable image: {e}") from None
    return fe(arr[None] / 255.0 * fe.max_value)


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise UploadError(f"image of {width}x{height} pixels exceeds the {MAX_IMAGE_PIXELS}-pixel limit")


def check_png(body: bytes) -> None:
    """Walk a PNG's chunks: the declared size within the pixel limit, compressed metadata within its
    inflation budget. Raises :class:`UploadError`; leaves everything else to the decoder."""
    pos, budget, chunks = len(PNG_SIGNATURE), MAX_PNG_METADATA_BYTES, 0
    while pos + 8 <= len(body):
        length, ctype = struct.unpack(">I4s", body[pos : pos + 8])
        data = body[pos + 8 : pos + 8 + length]
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise UploadError(f"PNG has more than {MAX_PNG_CHUNKS} chunks")
        if ctype == b"IHDR" and len(data) >= 8:
            _check_pixels(*struct.unpack(">II", data[:8]))
        elif ctype in (b"zTXt", b"iCCP", b"iTXt"):
            budget -= _inflated_size(ctype, data, budget)
        elif ctype == b"IEND":
            break
        pos += 12 + length


def _inflated_size(ctype: bytes, data: bytes, budget: int) -> int:
    """Bytes the chunk's compressed field inflates to; past ``budget``: UploadError."""
    name_end = data.find(b"\0")
    if name_end < 0:
        return 0  # malformed: the decoder reports it
    if ctype == b"iTXt":  # keyword\0 flag method language\0 translated\0 text
        if len(data) < name_end + 3 or data[name_end + 1] != 1:
            return 0  # not compressed
        rest = data[name_end + 3 :]
        for _ in range(2):  # skip language tag and translated keyword
            cut = rest.find(b"\0")
            if cut < 0:
                return 0
            rest = rest[cut + 1 :]
        compressed = rest
    else:  # zTXt, iCCP: keyword\0 method compressed
        compressed = data[name_end + 2 :]
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, budget + 1)
    except zlib.error:
        return 0  # corrupt stream: the decoder reports it
    if len(out) > budget:
        what = ctype.decode("ascii")
        raise UploadError(f"PNG {what} chunk inflates past the {MAX_PNG_METADATA_BYTES}-byte metadata limit "
                          f"(decompression bomb)")
    return len(out)
