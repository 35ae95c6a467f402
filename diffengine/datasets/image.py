"""Opening dataset images as RGB, whatever their file's mode, the way up
their EXIF orientation says."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import ExifTags, Image, ImageOps

# EXIF orientations that turn the picture a quarter: its displayed width is
# the stored height (phone portraits are stored landscape, tagged 6 or 8).
QUARTER_TURNS = (5, 6, 7, 8)


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


def _open(source: dict | str | bytes) -> Image.Image:
    """The image of ``source``, opened lazily (its header read)."""
    path, data = path_and_bytes(source)
    return Image.open(io.BytesIO(data) if data is not None else path)


def _read_error(source: dict | str | bytes, err: Exception) -> OSError:
    path = path_and_bytes(source)[0]
    return OSError(f"cannot read image {path or '<bytes>'}: {err}")


# What Pillow raises on a missing, truncated, oversized or non-image file.
READ_ERRORS = (OSError, ValueError, TypeError, SyntaxError,
               Image.DecompressionBombError)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an opened image, from its header.

    1 for a TIFF, which Pillow turns itself, and for a PNG whose eXIf chunk
    comes after the pixels (reading it would decode them; writers put it
    before).
    """
    if image.format == "TIFF" or (image.format == "PNG"
                                  and "exif" not in image.info):
        return 1
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as viewers show it, from its
    header."""
    width, height = image.size
    if exif_orientation(image) in QUARTER_TURNS:
        return height, width
    return width, height


def open_image(source: dict | str | bytes) -> Image.Image:
    """Open and fully decode an image as RGB, turned by its EXIF orientation.

    Args:
        source: A path, raw bytes, or an undecoded HF ``datasets`` image
            (``{"bytes": ..., "path": ...}``).

    Raises:
        OSError: If the file is missing, truncated or not an image; the
            message names the file.
    """
    try:
        image = _open(source)
        # Read from the header, as image_size reads it, so that both agree.
        orientation = exif_orientation(image)
        # load() decodes every pixel: verify() lets truncated JPEGs through.
        image.load()
        # Before anything reads the size: a phone portrait is stored
        # landscape with orientation 6 or 8.
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
    except READ_ERRORS as err:
        raise _read_error(source, err) from err
    return to_rgb(image)


def check_image(source: dict | str | bytes) -> tuple[int, int]:
    """Decode an image to prove it whole; its displayed (width, height).

    Cheaper than :func:`open_image` (no turn, no conversion), for scanning
    a dataset; picklable, for worker processes.

    Raises:
        OSError: As :func:`open_image`.
    """
    try:
        with _open(source) as image:
            size = displayed_size(image)
            # A JPEG decodes at an eighth of its size: every byte is still
            # read and entropy-decoded, so a truncated file still fails, in
            # about two thirds of the time.
            image.draft("RGB", (image.width // 8, image.height // 8))
            image.load()
            return size
    except READ_ERRORS as err:
        raise _read_error(source, err) from err


def image_size(source: dict | str | bytes) -> tuple[int, int]:
    """(width, height) of an image as displayed (after its EXIF orientation,
    as :func:`open_image` turns it), read from its header only.

    Args:
        source: As for :func:`open_image`.

    Raises:
        OSError: If the file is missing or not an image; the message names
            it.
    """
    try:
        with _open(source) as image:
            return displayed_size(image)
    except READ_ERRORS as err:
        raise _read_error(source, err) from err


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
