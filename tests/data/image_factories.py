"""Writers of small real image files in awkward formats, for decoder and audit tests.

Each takes the path to write, returns it, and documents the pixels it writes so a test can
check the decoded result. Sizes are (width, height) as PIL gives them.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)
TWO_TONE_SIZE = (64, 48)


def two_tone(size: tuple[int, int] = TWO_TONE_SIZE) -> Image.Image:
    """RGB image: left half RED, right half BLUE."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels)


def write_two_tone(path: Path, *, size: tuple[int, int] = TWO_TONE_SIZE, image_format: str | None = None) -> Path:
    """Left half RED, right half BLUE, in the format the suffix (or `image_format`) names: .jpg/.png/.webp/...

    JPEG and WebP are saved at high quality, so the halves stay within a few levels of their colour.
    """
    two_tone(size).save(path, format=image_format, quality=95)
    return path


def write_grayscale_png(path: Path) -> Path:
    """Mode L, 40x30: left half 40, right half 200."""
    pixels = np.full((30, 40), 200, dtype=np.uint8)
    pixels[:, :20] = 40
    Image.fromarray(pixels).save(path)
    return path


def write_palette_transparent_png(path: Path) -> Path:
    """Mode P with a transparent index, 40x30: left half transparent (palette colour black), right half GREEN."""
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    image.paste(0, (0, 0, 20, 30))
    image.save(path, transparency=0)
    return path


def write_rgba_png(path: Path) -> Path:
    """Mode RGBA, 40x30: left half fully transparent black, right half opaque RED."""
    pixels = np.zeros((30, 40, 4), dtype=np.uint8)
    pixels[:, 20:] = (*RED, 255)
    Image.fromarray(pixels).save(path)
    return path


def write_cmyk_jpeg(path: Path) -> Path:
    """CMYK JPEG, 32x32, all C=0 M=255 Y=255 K=0 (pure red, 255,0,0 in RGB).

    PIL writes CMYK JPEGs the way Photoshop does: with an Adobe marker and inverted values.
    """
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)
    return path


def write_png16(path: Path) -> Path:
    """16-bit grayscale PNG (mode I;16), 30x10: thirds of 0, 32768 and 65535."""
    pixels = np.zeros((10, 30), dtype=np.uint16)
    pixels[:, 10:20] = 32768
    pixels[:, 20:] = 65535
    Image.fromarray(pixels).save(path)
    return path


def write_exif_rotated_jpeg(path: Path, *, orientation: int = 6) -> Path:
    """JPEG stored 60 wide x 40 high, white with a RED 12x12 block in the stored top-left corner.

    The EXIF orientation tag makes viewers turn it: with 6 the picture is 40x60 and the block is
    at the top right; with 8 it is 40x60 with the block at the bottom left.
    """
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste(RED, (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes())
    return path


def write_animated_gif(path: Path) -> Path:
    """Three-frame GIF, 20x20: frames RED, GREEN, BLUE (the first frame is RED)."""
    frames = [Image.new("RGB", (20, 20), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB noise: it compresses badly, so the pixel data is most of the file."""
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_truncated_jpeg(path: Path) -> Path:
    """A 96x96 noise JPEG cut off at 60% of its bytes: the header is whole, the scan data is not."""
    buffer = io.BytesIO()
    _noise((96, 96)).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * 0.6)])
    return path


def write_truncated_png(path: Path) -> Path:
    """A 96x96 noise PNG cut off at 60% of its bytes: IHDR is whole, IDAT is not."""
    buffer = io.BytesIO()
    _noise((96, 96)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * 0.6)])
    return path


def write_text_file(path: Path) -> Path:
    """Plain text, whatever the suffix says (use it with a name like fake.jpg)."""
    path.write_text("this is not an image\n")
    return path


def write_empty_file(path: Path) -> Path:
    """A 0-byte file."""
    path.write_bytes(b"")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming width x height (8-bit grey), with one tiny IDAT.

    Only the header is honest: decoding it would need width*height bytes it does not hold, so a
    reader that refuses it from the header alone never touches the pixel data.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    path.write_bytes(png)
    return path
