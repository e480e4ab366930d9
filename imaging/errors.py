"""Typed errors for everything that can be wrong with an input image.

Each subclass has a stable ``code``; callers branch on the class or the code, never on the text.
"""

from __future__ import annotations

from breastdx.errors import BreastdxError


class ImagingError(BreastdxError):
    """Base class: the input could not be turned into pixels a model can use."""

    code = "imaging_error"
    title = "Image could not be used"
    http_status = 422


class EmptyInputError(ImagingError):
    code = "empty_input"
    title = "Empty input"
    http_status = 400


class UnrecognisedFormatError(ImagingError):
    """The bytes are none of DICOM, PNG, JPEG, PGM or TIFF (recognised by content)."""

    code = "unrecognised_format"
    title = "Unrecognised image format"
    http_status = 415


class TruncatedImageError(ImagingError):
    code = "truncated_image"
    title = "Truncated image"


class CorruptImageError(ImagingError):
    """The container was recognised but its content is inconsistent or undecodable."""

    code = "corrupt_image"
    title = "Corrupt image"


class NotAnImageError(ImagingError):
    """A DICOM object that holds no image to analyse (SR, SEG, presentation state, ...)."""

    code = "not_an_image"
    title = "DICOM object is not an image"


class UnsupportedPhotometricError(ImagingError):
    code = "unsupported_photometric_interpretation"
    title = "Unsupported photometric interpretation"


class UnsupportedBitDepthError(ImagingError):
    code = "unsupported_bit_depth"
    title = "Unsupported bit depth"


class UnsupportedTransferSyntaxError(ImagingError):
    code = "unsupported_transfer_syntax"
    title = "Unsupported transfer syntax"
    http_status = 415


class ImageTooLargeError(ImagingError):
    """The declared image size exceeds the configured pixel limit (decompression bomb guard)."""

    code = "image_too_large"
    title = "Image too large"
    http_status = 413


class InvalidGeometryError(ImagingError):
    """A crop, flip, resize or mask does not fit the image it is applied to."""

    code = "invalid_geometry"
    title = "Invalid geometry"


class UnsupportedCompressionError(ImagingError):
    """A raster file uses a compression this service has no decoder for (e.g. 12-bit JPEG)."""

    code = "unsupported_compression"
    title = "Unsupported compression"
    http_status = 415


class ImageFileNotFoundError(ImagingError):
    """A path given to ``decode`` does not exist."""

    code = "file_not_found"
    title = "File not found"
    http_status = 404


class UnreadableFileError(ImagingError):
    """A path exists but is not a regular file that can be read (directory, device, no access)."""

    code = "unreadable_file"
    title = "Unreadable file"
