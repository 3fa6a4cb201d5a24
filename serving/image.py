"""Image file bytes -> uint8 pixels: the one decoder and image policy that training data and the server share.

One policy everywhere (the data manifest check, the dataset builder and the server's
``/v1/classify``), so an image that trains is an image that serves:

- formats: ``IMAGE_FORMATS`` only (PNG, JPEG, BMP, GIF; TIFF, WebP... are refused);
- size: at most ``MAX_IMAGE_PIXELS`` pixels, checked from the header before any pixel is decoded;
- a PNG's compressed metadata (zTXt, iTXt, iCCP) is inflated with a budget of
  ``MAX_PNG_METADATA_BYTES`` in all, and its chunks counted, before Pillow sees the file
  (decompression bombs).

Every format decodes to the same rules:

- EXIF orientation is applied (phone JPEGs);
- 16-bit images (``I;16``, ``I``) are scaled to 8 bits (value / 257), never clipped at 255;
- transparency (RGBA, LA, palette with a transparent index) is composited onto black, i.e.
  every pixel is multiplied by its alpha;
- then the image is converted to grayscale (``L``, ITU-R 601 luma) or RGB and resized with
  bilinear filtering.

Depth maps (``decode_depth``) go through the same limits but keep their 16-bit levels: a single-channel
16-bit PNG only (an 8-bit or colour file is refused: scaling it would invent a depth range), resized, where a
size is asked for, with nearest-neighbour sampling (a bilinear blend of a foreground and a background
level is a depth where nothing is).

Every refusal is an :class:`ImageError` whose message says which limit or why.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np


class ImageError(ValueError):
    """The bytes are not an image this decoder accepts; the message says why."""


IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # Pillow format names
MAX_IMAGE_PIXELS = 1 << 24  # 16.8 Mpx (4096 x 4096); the models take a few thousand
MAX_PNG_METADATA_BYTES = 1 << 20  # inflated zTXt/iTXt/iCCP, all chunks together
MAX_PNG_CHUNKS = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, channels: int = 1, size: tuple[int, int] | None = None, *,
                 formats: tuple[str, ...] = IMAGE_FORMATS, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Image bytes -> uint8 [channels, H, W]; ``size`` (height, width) resizes. Raises :class:`ImageError`."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    im = _open(data, formats, max_pixels)
    if im.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        im = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBa", "RGBA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    im = im.convert("L" if channels == 1 else "RGB")
    if size is not None:
        h, w = size
        im = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _open(data: bytes, formats: tuple[str, ...], max_pixels: int):
    """Bytes -> a loaded, EXIF-oriented Pillow image within the limits; ImageError otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data.startswith(PNG_SIGNATURE):
        check_png(data, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=formats) as im:  # lazy: the header alone
                if im.width == 0 or im.height == 0:
                    raise ImageError("image has zero size")
                _check_pixels(im.width, im.height, max_pixels)  # before any pixel is decoded
                im.load()
                im = ImageOps.exif_transpose(im)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large: over the pixel limit (decompression bomb): {e}") from None
        except UnidentifiedImageError:
            raise ImageError(f"unreadable image: not a {'/'.join(formats)} image that Pillow can identify") from None
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... on hostile files
            raise ImageError(f"unreadable image: {type(e).__name__}: {e}") from None
    return im


def image_info(data: bytes) -> tuple[str, int, int]:
    """(Pillow mode, width, height) from the header alone, no pixel decoded; ImageError if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            return im.mode, im.width, im.height
    except Exception as e:
        raise ImageError(f"unreadable image: {type(e).__name__}: {e}") from None


def is_depth_png(data: bytes) -> bool:
    """A single-channel 16-bit PNG (IHDR bit depth 16, colour type 0): what a depth camera writes."""
    return data.startswith(PNG_SIGNATURE) and len(data) >= 26 and data[12:16] == b"IHDR" and data[24] == 16 \
        and data[25] == 0


def decode_depth(data: bytes, size: tuple[int, int] | None = None, *,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A single-channel 16-bit PNG -> uint16 levels [1, H, W], every level kept; ``size`` (height, width)
    resizes with nearest-neighbour sampling. Raises :class:`ImageError` (an 8-bit or colour file included)."""
    from PIL import Image

    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("a depth map must be a 16-bit single-channel PNG; this file is not a PNG")
    if not is_depth_png(data):
        bits = data[24] if len(data) > 25 else "?"
        colour = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(data[25] if len(data) > 25
                                                                                       else -1, "unknown")
        raise ImageError(f"{bits}-bit {colour} PNG; a depth map must be a 16-bit single-channel PNG (an 8-bit "
                         "file has lost the depth's precision: export the camera's 16-bit map)")
    im = _open(data, ("PNG",), max_pixels)
    levels = np.asarray(im, dtype=np.int64)
    if levels.ndim != 2 or levels.min() < 0 or levels.max() > 65535:
        raise ImageError(f"depth PNG decoded to mode {im.mode} with levels outside 0..65535")
    levels = levels.astype(np.uint16)
    if size is not None and tuple(size) != levels.shape:
        h, w = size
        levels = np.asarray(Image.fromarray(levels.astype(np.int32), "I").resize((w, h), Image.NEAREST),
                            np.int64).astype(np.uint16)
    return levels[None]


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} pixels exceeds the {max_pixels}-pixel limit")


def check_png(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Walk a PNG's chunks: the declared size within the pixel limit, compressed metadata within its
    inflation budget. Raises :class:`ImageError`; leaves everything else to the decoder."""
    pos, budget, chunks = len(PNG_SIGNATURE), MAX_PNG_METADATA_BYTES, 0
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"PNG has more than {MAX_PNG_CHUNKS} chunks")
        if ctype == b"IHDR" and len(chunk) >= 8:
            _check_pixels(*struct.unpack(">II", chunk[:8]), max_pixels)
        elif ctype in (b"zTXt", b"iCCP", b"iTXt"):
            budget -= _inflated_size(ctype, chunk, budget)
        elif ctype == b"IEND":
            break
        pos += 12 + length


def _inflated_size(ctype: bytes, data: bytes, budget: int) -> int:
    """Bytes the chunk's compressed field inflates to; past ``budget``: ImageError."""
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
        raise ImageError(f"PNG {what} chunk inflates past the {MAX_PNG_METADATA_BYTES}-byte metadata limit "
                         f"(decompression bomb)")
    return len(out)
