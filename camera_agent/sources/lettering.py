"""Text for generated pictures (the test pattern, the broker's "no signal"), with Pillow's
built-in font: no font files to find on the machine."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

__all__ = ["text_mask"]

# Every mask spans this string's height, so that texts pasted at one y share a baseline.
_LINE = "Ag"


def text_mask(text: str, size: int) -> Image.Image:
    """`text` as a greyscale mask about `size` pixels tall (paste a colour through it)."""
    try:
        font = ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font, crisp at any size
    except (TypeError, ImportError):  # older Pillow, or one without FreeType: a small bitmap font
        font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox(_LINE)
    left, _, right, _ = font.getbbox(text)
    mask = Image.new("L", (max(1, right - left), bottom - top))
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font)
    if mask.height < size * 0.6:  # the bitmap font is about 11 pixels tall: scale it up
        scale = size / mask.height
        mask = mask.resize((max(1, round(mask.width * scale)), size), Image.Resampling.BILINEAR)
    return mask
