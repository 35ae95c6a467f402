"""Opening dataset images as RGB, whatever their file's mode."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent pixels (RGBA, LA, palette with transparency) are composited
    on white, as image viewers show them; 16- and 32-bit grayscale is scaled
    to 8 bits instead of being clipped, which ``convert("RGB")`` would do.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and array.max() <= 1.0:
            array = array * 255.0  # float images in [0, 1]
        elif image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0  # 16-bit range onto 8 bits
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def path_and_bytes(source: dict | str | bytes) -> tuple[str | None,
                                                         bytes | None]:
    """Split an image source into its path and its bytes (either may be
    None): a path, raw bytes, or an undecoded HF ``datasets`` image."""
    if isinstance(source, dict):
        return source.get("path"), source.get("bytes")
    if isinstance(source, bytes):
        return None, source
    return source, None


def open_image(source: dict | str | bytes) -> Image.Image:
    """Open and fully decode an image as RGB.

    Args:
        source: A path, raw bytes, or an undecoded HF ``datasets`` image
            (``{"bytes": ..., "path": ...}``).

    Raises:
        OSError: If the file is missing, truncated or not an image; the
            message names the file.
    """
    path, data = path_and_bytes(source)
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        # load() decodes every pixel: verify() lets truncated JPEGs through.
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise OSError(f"cannot read image {path or '<bytes>'}: {err}") from err
    return to_rgb(image)


def image_size(source: dict | str | bytes) -> tuple[int, int]:
    """(width, height) of an image, read from its header only.

    Args:
        source: As for :func:`open_image`.

    Raises:
        OSError: If the file is missing or not an image; the message names
            it.
    """
    path, data = path_and_bytes(source)
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            return image.size
    except (OSError, ValueError, TypeError,
            Image.DecompressionBombError) as err:
        raise OSError(f"cannot read image {path or '<bytes>'}: {err}") from err


def image_digest(source: dict | str | bytes) -> str:
    """SHA-256 (hex) of the bytes of an image file, as cache keys need.

    Args:
        source: As for :func:`open_image`.

    Raises:
        OSError: If the file cannot be read; the message names it.
    """
    path, data = path_and_bytes(source)
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, TypeError) as err:
            raise OSError(f"cannot read image {path}: {err}") from err
    return hashlib.sha256(data).hexdigest()
