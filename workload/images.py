"""Thumbnails with Pillow, with the pixel limit checked before decoding the whole image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from workload.errors import ImageTooLarge, InvalidImage


def make_thumbnail(data: bytes, target: Path, size: int, max_pixels: int) -> dict[str, Any]:
    """Write a PNG thumbnail of at most ``size`` x ``size`` pixels; returns what was made."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"image is {width}x{height} pixels; the limit is {max_pixels}"
                    )
                source_format = image.format
                image.load()
                thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"not a readable image: {exc}") from None
    thumb.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    thumb.save(tmp, format="PNG")
    tmp.replace(target)
    return {
        "path": str(target),
        "source_format": source_format,
        "source_size": [width, height],
        "size": list(thumb.size),
        "bytes": target.stat().st_size,
    }
