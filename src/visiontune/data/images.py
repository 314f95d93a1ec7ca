"""Decoding image files into RGB: the one place that calls PIL to read pixels.

Every other module gets an RGB `PIL.Image` from here, or an `ImageError` with a short reason
it can show or count. The pixel limit is checked from the header, before any pixel data is
decoded, so a hostile or mistaken file can't exhaust memory.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from visiontune.errors import ImageError, ImageTooLargeError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = str | os.PathLike[str] | IO[bytes]

# What PIL raises on bad data: each plugin has its own habits (OSError for truncation, SyntaxError for
# a bad header, struct.error / IndexError / ValueError deep inside a parser).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"})
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the picture by 90 degrees
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding pixels.

    `mode` is the file's own mode ("CMYK", "I;16", "P"...), not the RGB it decodes to; `width`
    and `height` are as displayed, after EXIF orientation, so they match `open_image`.
    """

    width: int
    height: int
    mode: str
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS, in any case ("IMG_1.JPG" counts)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_header(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size, mode and format of an image file, from its header only.

    Example:
        >>> read_header("photos/cat/1.jpg")  # doctest: +SKIP
        ImageHeader(width=4032, height=3024, mode='RGB', format='JPEG')
    """
    with _opened(source, max_pixels=max_pixels) as image:
        width, height = image.size
        if _orientation(image) in _SWAPS_AXES:
            width, height = height, width
        return ImageHeader(width, height, image.mode, image.format or "")


def open_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """A fully loaded, upright RGB image, or ImageError / ImageTooLargeError with a short reason.

    `draft_size` (w, h) lets a JPEG decode at 1/2, 1/4 or 1/8 scale when that still gives at least
    this size: a 24-megapixel photo bound for a 224-pixel model decodes several times faster.

    Example:
        >>> open_image("photos/cat/1.jpg", draft_size=(256, 256)).mode  # doctest: +SKIP
        'RGB'
    """
    label = _label(source)
    with _opened(source, max_pixels=max_pixels) as image, _decode_errors(label, max_pixels):
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            width, height = draft_size
            swap = _orientation(image) in _SWAPS_AXES  # the draft size is in stored, not displayed, axes
            image.draft("RGB", (height, width) if swap else (width, height))
        image.load()  # an animated file stays on its first frame
        upright = ImageOps.exif_transpose(image) if _orientation(image) != 1 else image
        return _converted(upright, label)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB uint8: alpha composited on white, 16/32-bit and float data scaled to 0..255.

    An RGB image without transparency is returned as is, not copied.
    """
    return _converted(image, "<image>")


def from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array.

    uint8 is taken as is, uint16 is scaled from 0..65535, floats must lie in 0..1, bool is 0/255;
    four channels are RGBA and composited on white, like files.

    Example:
        >>> from_array(np.zeros((32, 48, 3), dtype=np.uint8)).size
        (48, 32)
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.size == 0 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise ImageError("<array>", _shape_reason(array.shape))
    return to_rgb(Image.fromarray(np.ascontiguousarray(_array_to_uint8(array))))


# --- opening and error translation -------------------------------------------------------------


@contextmanager
def _opened(source: ImageSource, *, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open with PIL's errors turned into ImageError and the pixel limit checked; closes the file."""
    label = _label(source)
    _keep_pillow_limit_above(max_pixels)
    try:
        image = Image.open(source)
    except UnidentifiedImageError as exc:
        reason = "empty file (0 bytes)" if _is_empty(source) else "not an image file (unrecognised format)"
        raise ImageError(label, reason) from exc
    except _BOMB_ERRORS as exc:
        raise ImageTooLargeError(label, f"{exc}; over the limit of {max_pixels:,} pixels") from exc
    except OSError as exc:
        raise ImageError(label, f"can't read file ({exc.strerror or exc})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(label, "corrupt image header") from exc
    with image:
        _check_pixels(image.size, label, max_pixels)
        yield image


@contextmanager
def _decode_errors(label: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever PIL raises while decoding into ImageError, keeping the cause chained for debugging."""
    try:
        yield
    except ImageError:
        raise
    except _BOMB_ERRORS as exc:  # frames and tiles are checked again while decoding
        raise ImageTooLargeError(label, f"{exc}; over the limit of {max_pixels:,} pixels") from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data
            raise ImageError(label, f"can't read file ({exc.strerror})") from exc
        log.debug("%s: decode failed: %s", label, exc)
        raise ImageError(label, "truncated or corrupt image data") from exc
    except _DECODE_ERRORS as exc:
        log.debug("%s: decode failed: %r", label, exc)
        raise ImageError(label, "truncated or corrupt image data") from exc


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label,
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,};"
            " raise max_pixels if this file is trusted",
        )


def _keep_pillow_limit_above(max_pixels: int) -> None:
    """Let a caller's larger `max_pixels` through PIL's own decompression-bomb guard.

    PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; our limit is the one users set,
    so PIL's is only ever raised to match it (never lowered), and only when asked for more.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        log.info(
            "raising PIL.Image.MAX_IMAGE_PIXELS from %d to %d to match max_pixels", Image.MAX_IMAGE_PIXELS, max_pixels
        )
        Image.MAX_IMAGE_PIXELS = max_pixels


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8), or 1 when there is none or the EXIF block is unreadable.

    Never decodes pixels: PIL's PNG reader would load the whole image to look for a late eXIf chunk,
    so an unloaded PNG without EXIF in its header counts as upright.
    """
    if image.format == "PNG" and "exif" not in image.info and image.tile:  # `tile` empties once loaded
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS as exc:  # a broken EXIF block should not cost an otherwise good image
        log.debug("%s: unreadable EXIF (%s); orientation ignored", _label(image), exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _label(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "name", None) or getattr(source, "filename", None) or "<stream>")


def _is_empty(source: ImageSource) -> bool:
    try:
        if isinstance(source, str | os.PathLike):
            return os.path.getsize(source) == 0
        return source.seek(0, os.SEEK_END) == 0
    except (OSError, ValueError):
        return False


# --- mode conversion ----------------------------------------------------------------------------


def _converted(image: Image.Image, label: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    try:
        if mode in _INT_MODES:
            return Image.fromarray(_int_to_uint8(np.asarray(image))).convert("RGB")
        if mode == "F":
            return Image.fromarray(_float_to_uint8(np.asarray(image))).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _on_white(image.convert("RGBA"))
        return image.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted too), YCbCr, LAB, HSV, RGBX
    except ValueError as exc:  # modes PIL can read but not convert, e.g. premultiplied "La"
        raise ImageError(label, f"can't convert image mode {mode!r} to RGB") from exc


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite on white: transparent areas are background, and white is what viewers show there."""
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit data scaled by 255/65535 (65535 -> 255, never clipped); wider data by its bit depth.

    PIL's mode "I" holds 16-bit PNGs from older encoders as well as true 32-bit data, so the depth
    is the smallest of 16, 24 and 32 bits that holds the largest value. Negative values become 0.
    """
    values = np.clip(values, 0, None).astype(np.int64)
    largest = int(values.max(initial=0))
    bits = 16 if largest < 2**16 else 24 if largest < 2**24 else 32
    top = 2**bits - 1
    return ((values * 255 + top // 2) // top).astype(np.uint8)  # integer maths rounds half up exactly


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in 0..1 scaled by 255; other ranges (depth maps, float TIFFs) stretched to fill 0..255.

    The stretch spans min(0, lowest)..max(0, highest), so zero stays black unless data goes below it.
    """
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        log.debug("float pixels in %.4g..%.4g, not 0..1: stretched to 0..255", low, high)
        values = (values - low) / (high - low)
    return np.round(values * 255.0).astype(np.uint8)


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """An in-memory array's pixels as uint8; stricter than for files, since a wrong range is a caller's bug."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _int_to_uint8(array)
    low, high = (float(array.min()), float(array.max())) if array.dtype.kind in "iuf" else (0.0, 0.0)
    if array.dtype.kind == "f":
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageError("<array>", f"float pixels must lie in 0..1, got {low:.4g}..{high:.4g}; divide by 255?")
        return np.round(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.dtype.kind in "iu" and low >= 0 and high <= 255:
        return array.astype(np.uint8)
    raise ImageError(
        "<array>", f"pixels of dtype {array.dtype} must be uint8, uint16, bool, floats in 0..1 or integers in 0..255"
    )


def _shape_reason(shape: tuple[int, ...]) -> str:
    hint = ""
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 2, 3, 4):
        hint = "; this looks channels-first, use array.transpose(1, 2, 0)"
    return f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {tuple(shape)}{hint}"
