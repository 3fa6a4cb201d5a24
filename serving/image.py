"""Image file bytes -> uint8 pixels: the one decoder that training data and the server share.

PNG and JPEG of any mode decode to the same rules everywhere (the data manifest check, the
dataset builder and the server's raw-image route):

- EXIF orientation is applied (phone JPEGs);
- 16-bit images (``I;16``, ``I``) are scaled to 8 bits (value / 257), never clipped at 255;
- transparency (RGBA, LA, palette with a transparent index) is composited onto black, i.e.
  every pixel is multiplied by its alpha;
- then the image is converted to grayscale (``L``, ITU-R 601 luma) or RGB and resized with
  bilinear filtering.

Images over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``, ~89 M) are refused before they
are decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np


class ImageError(ValueError):
    """The bytes are not an image this decoder accepts; the message says why."""


_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, channels: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image bytes -> uint8 [channels, H, W]; ``size`` (height, width) resizes. Raises :class:`ImageError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width == 0 or im.height == 0:
                    raise ImageError("image has zero size")
                im.load()
                im = ImageOps.exif_transpose(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large to decode ({e})") from None
        except UnidentifiedImageError:
            raise ImageError("unreadable image: not a PNG or JPEG that Pillow can identify") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"unreadable image: {e}") from None
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
