"""Image decoding to 8-bit RGB, and the two resizes the pipeline uses.

``load_rgb`` turns any image PIL can read into a correctly oriented
``uint8`` array of shape (H, W, 3):

* EXIF orientation is applied (``ImageOps.exif_transpose``), so photos taken
  in portrait come out upright;
* transparency (RGBA, LA, palette with a transparent index, PA) is composited
  over white, not dropped (dropping alpha shows whatever colour the fully
  transparent pixels happen to store, often black);
* grayscale (L, 1) is replicated to three channels; CMYK goes through PIL's
  conversion;
* 16-bit images (I;16, I;16B, I) are scaled to 8 bit with ``round(v / 257)``,
  which maps 0 -> 0 and 65535 -> 255 (PIL's own ``convert('RGB')`` clips them
  instead, turning most 16-bit images white).

Unreadable files raise ``UserError("<path>: cannot read image (<reason>)")``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from keras_hyperiqa.errors import UserError

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _over_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _over_white(np.asarray(im.convert("RGBA"), dtype=np.uint8))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        if a.dtype.byteorder not in ("=", "|"):
            a = a.astype(a.dtype.newbyteorder("="))
        a8 = np.clip(np.rint(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(a8[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        a8 = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
        return np.repeat(a8[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_rgb(path) -> np.ndarray:
    """Decode ``path`` to a C-contiguous ``uint8`` (H, W, 3) RGB array (see module doc)."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb_array(im)
    except FileNotFoundError:
        raise UserError(f"{path}: cannot read image (file not found)") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"{path}: cannot read image (not an image file PIL can identify)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read image ({reason})") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"{path}: cannot read image (empty image)")
    return np.ascontiguousarray(arr)


def resize_hw(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (H, W) with PIL bilinear, as torchvision ``Resize((H, W))`` on a PIL image."""
    h, w = int(size[0]), int(size[1])
    if img.shape[0] == h and img.shape[1] == w:
        return img
    out = Image.fromarray(img).resize((w, h), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def resize_short_side(img: np.ndarray, short: int) -> np.ndarray:
    """Resize (bilinear) keeping aspect so that the short side equals ``short``."""
    h, w = img.shape[:2]
    if min(h, w) == short:
        return img
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nw, nh = short, max(short, int(round(h * short / w)))
    return resize_hw(img, (nh, nw))


def ensure_min_side(img: np.ndarray, patch: int) -> np.ndarray:
    """Upscale (bilinear, keeping aspect) so the short side is ``patch``; no-op if already big enough."""
    h, w = img.shape[:2]
    if min(h, w) >= patch:
        return img
    return resize_short_side(img, patch)
