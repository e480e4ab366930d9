"""Resource limits for decoding untrusted images."""

from __future__ import annotations

# 4 frames of a 8000x6000 image, or 64 frames of 2000x1500: far above a mammogram
# (about 4000x3000) and well below what would exhaust memory as float32.
DEFAULT_MAX_PIXELS = 200_000_000
