"""Reading the training images: libwebp and Pillow give the same pixels for every kind of
file the download stage writes (and some it does not), and refuse the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kohaku.errors import InputError
from kohaku.train import images
from kohaku.train.images import DECODERS, FASTER, read_batch, read_image

SIZE = (48, 32)  # width, height


def picture(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, SIZE[0])[None, :, None] * np.ones((SIZE[1], 1, 4))
    pixels = np.clip(ramp + rng.normal(0, 30, ramp.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGBA")
    return img.convert(mode) if mode == "RGBA" else img.convert("RGB").convert(mode)


FILES = {  # name: (mode, format, save options)
    "q90.webp": ("RGB", "WEBP", {"quality": 90, "method": 4}),  # the download stage's default
    "lossless.webp": ("RGB", "WEBP", {"lossless": True}),
    "alpha.webp": ("RGBA", "WEBP", {"quality": 90}),
    "q95.jpg": ("RGB", "JPEG", {"quality": 95, "subsampling": 0}),
    "q85-420.jpeg": ("RGB", "JPEG", {"quality": 85, "subsampling": 2}),
    "grey.jpg": ("L", "JPEG", {"quality": 95}),
    "rgba.png": ("RGBA", "PNG", {}),
    "palette.png": ("P", "PNG", {}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    for name, (mode, fmt, options) in FILES.items():
        picture(mode).save(folder / name, fmt, **options)
    return {name: folder / name for name in FILES}


def test_the_fast_decoders_are_there():
    """Otherwise every other test here would only compare Pillow with itself."""
    assert images._libwebp() is not None
    assert set(FASTER.values()) <= set(DECODERS)


@pytest.mark.parametrize("name", list(FILES))
def test_every_decoder_gives_pillows_pixels(files, name):
    with Image.open(files[name]) as img:
        expected = np.asarray(img.convert("RGB"))
    batch = np.zeros((2, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    for decoder in DECODERS.values():
        got = decoder(files[name], SIZE)
        assert got.shape == (SIZE[1], SIZE[0], 3) and got.dtype == np.uint8
        assert np.array_equal(got, expected), decoder.__name__
        slot = batch[1]
        assert decoder(files[name], SIZE, slot) is slot  # decoded into its place in a batch
        assert np.array_equal(slot, expected) and not batch[0].any(), decoder.__name__
        slot[...] = 0
    assert np.array_equal(read_image(files[name], SIZE), expected)
    assert np.array_equal(read_batch([files[name]] * 2, SIZE), np.stack([expected] * 2))


def test_an_animated_webp_gives_its_first_frame(tmp_path):
    frames = [picture(), Image.new("RGB", SIZE, (255, 0, 0))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(tmp_path / "anim.webp") as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "anim.webp", SIZE), expected)


@pytest.mark.parametrize("name", ["q90.webp", "q95.jpg", "rgba.png"])
def test_wrong_size_truncated_and_missing_files_are_input_errors(files, tmp_path, name):
    for decoder in DECODERS.values():
        with pytest.raises(InputError, match=r"is 48x32, its bucket 32x48"):
            decoder(files[name], (32, 48))
    cut = tmp_path / name
    cut.write_bytes(files[name].read_bytes()[: files[name].stat().st_size * 2 // 3])
    for decoder in DECODERS.values():
        with pytest.raises(InputError, match="is not a readable image"):
            decoder(cut, SIZE)
    with pytest.raises(InputError, match="is missing"):
        read_image(tmp_path / "gone.webp", SIZE)
