"""OCR of scanned PDF pages with Tesseract (Apache-2.0), run as a subprocess.

Tesseract comes from Debian (``tesseract-ocr`` with its English model ``tesseract-ocr-eng``;
``make system-deps`` installs both): nothing is downloaded at run time. A page is rendered by
PDFium at :data:`DPI` in grayscale and handed to ``tesseract`` as a PGM image on standard input;
its TSV output gives each word with its box and confidence, grouped into blocks, paragraphs and
lines. :func:`recognise` returns those lines in Tesseract's reading order, in page points.

A page whose words are mostly guesses (mean confidence below :data:`MIN_PAGE_CONF`, as on noise
or a photograph) has no text; on a page with text, a line whose words are all guesses (mean
confidence below :data:`MIN_LINE_CONF`: specks, a picture's texture) is dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from longrag.errors import DecodeError

log = logging.getLogger(__name__)

DPI = 300
"""Rendering resolution for OCR: Tesseract's models are trained on text at about 300 dpi."""

MAX_PIXELS = 40_000_000
"""Larger pages (posters, drawings) are rendered at a lower resolution to stay within this."""

MIN_PAGE_CONF = 50.0
MIN_LINE_CONF = 30.0
TIMEOUT_S = 300
LANG = "eng"
INSTALL_HINT = "install tesseract-ocr and tesseract-ocr-eng (`make system-deps`)"


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One recognised line, in page points from the top left; ``para`` numbers its paragraph."""

    text: str
    x0: float
    x1: float
    top: float
    bottom: float
    para: int
    conf: float


@lru_cache(maxsize=1)
def _tesseract() -> str | None:
    return shutil.which("tesseract")


@lru_cache(maxsize=1)
def _has_language(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return LANG in (out.stdout + out.stderr).split()


def available() -> bool:
    """Tesseract and its English model are installed."""
    exe = _tesseract()
    return exe is not None and _has_language(exe)


def render_scale(width: float, height: float) -> float:
    """PDFium's render scale (pixels per point) for a page of ``width`` x ``height`` points."""
    scale = DPI / 72
    area = max(1.0, width * height)
    if area * scale * scale > MAX_PIXELS:
        scale = (MAX_PIXELS / area) ** 0.5
    return scale


def pgm(pixels) -> bytes:
    """An 8-bit grayscale image (a 2-D numpy array) as a binary PGM file."""
    import numpy as np

    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 3:
        a = np.ascontiguousarray(a[:, :, 0])
    h, w = a.shape
    return b"P5\n%d %d\n255\n" % (w, h) + a.tobytes()


def recognise(image: bytes, scale: float, page: int) -> list[OcrLine]:
    """The text lines Tesseract finds in ``image`` (an image file's bytes, rendered at ``scale``
    pixels per point), in reading order; [] when it finds no text. ``page`` (1-based) is for
    messages."""
    exe = _tesseract()
    if exe is None:
        raise DecodeError(f"page {page} of the PDF is a scanned image and OCR is not available: {INSTALL_HINT}")
    dpi = max(70, round(scale * 72))
    # One thread per page: Tesseract's OpenMP threads make a page several times slower on a busy CPU.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    cmd = [exe, "stdin", "stdout", "-l", LANG, "--psm", "3", "--dpi", str(dpi), "tsv"]
    try:
        out = subprocess.run(cmd, input=image, capture_output=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"OCR of page {page} of the PDF took longer than {TIMEOUT_S} s") from None
    except OSError as exc:
        raise DecodeError(f"OCR of page {page} of the PDF failed: {exc}") from None
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError(f"OCR of page {page} of the PDF failed: {err[-1] if err else out.returncode}")
    return lines_from_tsv(out.stdout.decode("utf-8", "replace"), scale)


def lines_from_tsv(tsv: str, scale: float) -> list[OcrLine]:
    """Tesseract's TSV output as lines (see :func:`recognise`)."""
    groups: dict[tuple[int, int, int], list[tuple[str, int, int, int, int, float]]] = {}
    for row in tsv.splitlines()[1:]:
        f = row.split("\t")
        if len(f) < 12 or f[0] != "5":
            continue
        text = f[11].strip()
        try:
            conf = float(f[10])
            left, top, width, height = (int(v) for v in f[6:10])
            key = (int(f[2]), int(f[3]), int(f[4]))
        except ValueError:
            continue
        if not text or conf < 0:
            continue
        groups.setdefault(key, []).append((text, left, top, left + width, top + height, conf))
    words = [w for ws in groups.values() for w in ws]
    if not words or _mean_conf(words) < MIN_PAGE_CONF:
        return []
    out: list[OcrLine] = []
    paras: dict[tuple[int, int], int] = {}
    for (block, par, _), ws in groups.items():  # dicts keep Tesseract's order
        conf = _mean_conf(ws)
        if conf < MIN_LINE_CONF:
            continue
        para = paras.setdefault((block, par), len(paras))
        out.append(OcrLine(" ".join(w[0] for w in ws), min(w[1] for w in ws) / scale, max(w[3] for w in ws) / scale,
                           min(w[2] for w in ws) / scale, max(w[4] for w in ws) / scale, para, conf))
    return out


def _mean_conf(words) -> float:
    """Mean word confidence, each word weighted by its length."""
    n = sum(len(w[0]) for w in words)
    return sum(len(w[0]) * w[5] for w in words) / n if n else 0.0
