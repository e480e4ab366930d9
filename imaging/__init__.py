"""Torch-free imaging: decoding, display transform, preprocessing and mask post-processing.

``decode`` is imported eagerly: the function shares its name with the ``imaging.decode`` module,
and only an eager import keeps ``imaging.decode`` the function once that module is loaded.
"""

from __future__ import annotations

from imaging.decode import decode
from imaging.errors import (
    CorruptImageError,
    EmptyInputError,
    ImageFileNotFoundError,
    ImageTooLargeError,
    ImagingError,
    InvalidGeometryError,
    NotAnImageError,
    TruncatedImageError,
    UnreadableFileError,
    UnrecognisedFormatError,
    UnsupportedBitDepthError,
    UnsupportedCompressionError,
    UnsupportedPhotometricError,
    UnsupportedTransferSyntaxError,
)
from imaging.limits import DEFAULT_MAX_PIXELS
from imaging.record import DecodedImage, ImageFormat, ImageMetadata

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CorruptImageError",
    "DecodedImage",
    "EmptyInputError",
    "ImageFileNotFoundError",
    "ImageFormat",
    "ImageMetadata",
    "ImageTooLargeError",
    "ImagingError",
    "InvalidGeometryError",
    "NotAnImageError",
    "TruncatedImageError",
    "UnreadableFileError",
    "UnrecognisedFormatError",
    "UnsupportedBitDepthError",
    "UnsupportedCompressionError",
    "UnsupportedPhotometricError",
    "UnsupportedTransferSyntaxError",
    "decode",
]
