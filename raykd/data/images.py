"""Opening image files as RGB, whatever their mode (grayscale, RGBA, palette, 16-bit, CMYK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raykd.errors import UserError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def load_rgb(path: Path, expected_size: tuple[int, int], key: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image of ``expected_size`` = (width, height) from the annotations.

    Alpha is dropped; 16-bit grayscale is scaled to 8 bits. When the stored image has width and
    height swapped and its EXIF orientation says so, the annotations were made on the rotated
    view and the image is rotated to match. Raises :class:`UserError` naming ``path`` and
    ``key`` (e.g. ``images[3].file_name``) when the file is missing, unreadable or of another size.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != expected_size and image.size == expected_size[::-1]:
                if image.getexif().get(0x0112) in _EXIF_TRANSPOSED:
                    image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except FileNotFoundError:
        raise UserError("image file not found", file=path, key=key) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read the image ({err})", file=path, key=key) from None
    if rgb.size != expected_size:
        raise UserError(
            f"image is {rgb.size[0]}x{rgb.size[1]} but the annotations say width x height = "
            f"{expected_size[0]}x{expected_size[1]}",
            file=path,
            key=key.replace("file_name", "width"),
        )
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha dropped, 16-bit scaled down, palette transparency handled)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as :func:`load_rgb` shows it (EXIF rotation applied), read
    from its header without decoding the pixels. Raises :class:`UserError` naming ``path``."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _EXIF_TRANSPOSED:
                width, height = height, width
    except FileNotFoundError:
        raise UserError("image file not found", file=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read the image ({err})", file=path) from None
    return width, height
