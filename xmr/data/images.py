"""Image loading and preprocessing with PIL/numpy (torchvision does not import beside this torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xmr.data.base import DataError
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD

MAX_PIXELS = 64_000_000  # refuse decompression bombs with a clear message


def load_rgb(path: str | Path) -> Image.Image:
    """Open any PIL-readable image (grayscale, CMYK, alpha, palette) as RGB.

    Raises DataError naming the file for a missing, truncated, corrupt or huge image.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DataError(f"{path}: image is {im.width}x{im.height}, over {MAX_PIXELS} pixels")
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


# ImageNet normalisation (x / 255 - mean) / std as one multiply-add per channel
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)[:, None, None]
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)[:, None, None]


def to_tensor_array(im: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size (bicubic) and ImageNet-normalise: float32 (3, size, size)."""
    im = im.resize((size, size), Image.BICUBIC)
    # channels first while still uint8, then in place: 3x the speed of float passes in HWC order
    x = np.asarray(im).transpose(2, 0, 1).astype(np.float32, order="C")
    x *= _SCALE
    x += _OFFSET
    return x
