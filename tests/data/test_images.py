from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.data.image_factories import (
    BLUE,
    GREEN,
    RED,
    TWO_TONE_SIZE,
    two_tone,
    write_animated_gif,
    write_cmyk_jpeg,
    write_empty_file,
    write_exif_rotated_jpeg,
    write_grayscale_png,
    write_palette_transparent_png,
    write_png16,
    write_png_claiming_size,
    write_rgba_png,
    write_text_file,
    write_truncated_jpeg,
    write_truncated_png,
    write_two_tone,
)
from visiontune.data.images import (
    IMAGE_EXTENSIONS,
    ImageHeader,
    from_array,
    is_image_file,
    open_image,
    read_header,
    to_rgb,
)
from visiontune.errors import ImageError, ImageTooLargeError

WHITE = (255, 255, 255)


def assert_close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 8) -> None:
    assert len(pixel) == len(expected)
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), f"{pixel} != {expected}"


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "c.jpeg", "d.png", "e.webp", "f.bmp", "g.tif", "h.tiff"])
def test_formats_decode_to_rgb(tmp_path: Path, name: str) -> None:
    path = write_two_tone(tmp_path / name, image_format="JPEG" if name.endswith(".JPG") else None)
    image = open_image(path)
    assert image.mode == "RGB"
    assert image.size == TWO_TONE_SIZE
    assert_close(image.getpixel((8, 24)), RED)
    assert_close(image.getpixel((56, 24)), BLUE)


def test_is_image_file_ignores_case() -> None:
    assert is_image_file("x/IMG_0001.JPG") and is_image_file(Path("a.TiFf")) and is_image_file("a.webp")
    assert not is_image_file("notes.txt") and not is_image_file("jpg") and not is_image_file("archive.jpg.zip")
    assert ".jpeg" in IMAGE_EXTENSIONS and all(ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    image = open_image(write_animated_gif(tmp_path / "anim.gif"))
    assert (image.mode, image.size) == ("RGB", (20, 20))
    assert_close(image.getpixel((10, 10)), RED)


def test_grayscale(tmp_path: Path) -> None:
    image = open_image(write_grayscale_png(tmp_path / "grey.png"))
    assert (image.mode, image.size) == ("RGB", (40, 30))
    assert image.getpixel((5, 5)) == (40, 40, 40) and image.getpixel((35, 5)) == (200, 200, 200)


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    image = open_image(write_palette_transparent_png(tmp_path / "p.png"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == WHITE
    assert image.getpixel((35, 5)) == GREEN


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    image = open_image(write_rgba_png(tmp_path / "rgba.png"))
    assert (image.mode, image.size) == ("RGB", (40, 30))
    assert image.getpixel((5, 5)) == WHITE  # transparent black shows the white background
    assert image.getpixel((35, 5)) == RED


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = write_cmyk_jpeg(tmp_path / "cmyk.jpg")
    assert read_header(path).mode == "CMYK"
    image = open_image(path)
    assert (image.mode, image.size) == ("RGB", (32, 32))
    assert_close(image.getpixel((16, 16)), (255, 0, 0))


def test_png16_scaled_by_bit_depth_not_clipped(tmp_path: Path) -> None:
    path = write_png16(tmp_path / "deep.png")
    assert read_header(path).mode == "I;16"
    image = open_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (0, 0, 0)
    assert image.getpixel((15, 5)) == (128, 128, 128)
    assert image.getpixel((25, 5)) == (255, 255, 255)


@pytest.mark.parametrize(("orientation", "corner"), [(6, (39, 0)), (8, (0, 59))])
def test_exif_orientation(tmp_path: Path, orientation: int, corner: tuple[int, int]) -> None:
    path = write_exif_rotated_jpeg(tmp_path / "rot.jpg", orientation=orientation)
    image = open_image(path)
    assert image.size == (40, 60)
    x, y = corner
    assert_close(image.getpixel((x + (-4 if x else 4), y + (-4 if y else 4))), RED, tol=30)
    assert_close(image.getpixel((39 - x, 59 - y)), WHITE, tol=30)  # the opposite corner stays white
    assert read_header(path).width == 40 and read_header(path).height == 60


def test_draft_decodes_big_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    path = write_two_tone(tmp_path / "big.jpg", size=(800, 600))
    image = open_image(path, draft_size=(100, 100))
    assert image.size == (200, 150)  # 1/4 scale: the largest reduction that keeps >= 100x100
    assert_close(image.getpixel((10, 75)), RED) and assert_close(image.getpixel((190, 75)), BLUE)
    assert open_image(path, draft_size=(500, 500)).size == (800, 600)  # 1/2 would be too small


def test_draft_follows_exif_orientation(tmp_path: Path) -> None:
    path = write_exif_rotated_jpeg(tmp_path / "rot.jpg", orientation=6)
    assert open_image(path, draft_size=(20, 30)).size == (20, 30)  # 1/2 scale of the displayed 40x60


@pytest.mark.parametrize(
    ("name", "writer", "reason"),
    [
        ("cut.jpg", write_truncated_jpeg, "truncated or corrupt"),
        ("cut.png", write_truncated_png, "truncated or corrupt"),
        ("fake.jpg", write_text_file, "not an image file"),
        ("empty.png", write_empty_file, "empty file"),
    ],
)
def test_bad_files_raise_image_error(tmp_path: Path, name: str, writer, reason: str) -> None:
    path = writer(tmp_path / name)
    with pytest.raises(ImageError, match=reason) as info:
        open_image(path)
    assert info.value.path == str(path)
    assert not isinstance(info.value, ImageTooLargeError)


def test_unreadable_headers_raise_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an image file"):
        read_header(write_text_file(tmp_path / "fake.png"))
    with pytest.raises(ImageError, match="can't read file"):
        open_image(tmp_path / "missing.jpg")


def test_over_max_pixels_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = write_two_tone(tmp_path / "ok.png")
    with pytest.raises(ImageTooLargeError, match="3,072 pixels is over the limit of 1,000; raise max_pixels"):
        open_image(path, max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        read_header(path, max_pixels=1000)


def test_png_claiming_a_huge_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    path = write_png_claiming_size(tmp_path / "bomb.png", 100_000, 100_000)  # beyond PIL's own limit too
    with pytest.raises(ImageTooLargeError):
        open_image(path)
    path = write_png_claiming_size(tmp_path / "big.png", 10_000, 10_000)  # PIL warns; we refuse
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning raised as an error is converted too
        with pytest.raises(ImageTooLargeError, match="over the limit"):
            open_image(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trusted, larger max_pixels lifts PIL's own guard to match
        assert read_header(path, max_pixels=200_000_000) == ImageHeader(10_000, 10_000, "L", "PNG")
    assert Image.MAX_IMAGE_PIXELS == 200_000_000


def test_read_header_keeps_original_mode(tmp_path: Path) -> None:
    assert read_header(write_rgba_png(tmp_path / "a.png")) == ImageHeader(40, 30, "RGBA", "PNG")
    assert read_header(write_palette_transparent_png(tmp_path / "p.png")).mode == "P"
    assert read_header(write_two_tone(tmp_path / "t.jpg")) == ImageHeader(64, 48, "RGB", "JPEG")
    assert read_header(write_animated_gif(tmp_path / "g.gif")).format == "GIF"


def test_streams_work_like_paths(tmp_path: Path) -> None:
    data = write_cmyk_jpeg(tmp_path / "c.jpg").read_bytes()
    assert read_header(io.BytesIO(data)).mode == "CMYK"
    assert open_image(io.BytesIO(data)).mode == "RGB"
    with pytest.raises(ImageError, match="empty file"):
        open_image(io.BytesIO(b""))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("1", (4, 4), 1), WHITE),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("LA", (4, 4), (0, 0)), WHITE),
        (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), WHITE),
        (Image.new("RGBA", (4, 4), (*RED, 255)), RED),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.new("YCbCr", (4, 4), (255, 128, 128)), WHITE),
        (Image.new("I", (4, 4), 65535), WHITE),
        (Image.new("I;16B", (4, 4), 65535), WHITE),
        (Image.new("F", (4, 4), 0.5), (128, 128, 128)),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else "",
)
def test_to_rgb_modes(image: Image.Image, expected: tuple[int, int, int]) -> None:
    rgb = to_rgb(image)
    assert (rgb.mode, rgb.size) == ("RGB", (4, 4))
    assert_close(rgb.getpixel((1, 1)), expected, tol=1)


def test_to_rgb_leaves_rgb_alone() -> None:
    image = two_tone()
    assert to_rgb(image) is image


def test_from_array_shapes_and_dtypes() -> None:
    assert from_array(np.full((5, 7), 9, np.uint8)).getpixel((0, 0)) == (9, 9, 9)
    assert from_array(np.full((5, 7, 1), 65535, np.uint16)).getpixel((0, 0)) == WHITE
    assert from_array(np.full((5, 7, 3), 0.5, np.float32)).getpixel((0, 0)) == (128, 128, 128)
    rgba = np.zeros((5, 7, 4), np.uint8)
    image = from_array(rgba)
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (7, 5), WHITE)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 32, 32), np.uint8), "channels-first"),
        (np.zeros((4, 4, 5), np.uint8), "got shape"),
        (np.zeros((2, 2, 2, 3), np.uint8), "got shape"),
        (np.zeros((0, 4), np.uint8), "got shape"),
        (np.full((4, 4), 255.0), "divide by 255"),
        (np.full((4, 4), 300, np.int64), "integers in 0..255"),
    ],
)
def test_from_array_rejects_bad_input(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        from_array(array)
