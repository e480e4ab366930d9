"""The per-request budget of decoded bytes, taken from the image headers before any decoding.

The pixel limit (``max_pixels``) bounds one image; this bounds a request. Decoded bytes are
counted as the analysis holds them, float32: 4 bytes per stored value (rows x columns x frames
x samples, ``imaging.decode.declared_size``), whatever the stored bit depth. Their sum over the
request's inputs must be at most ``max_request_decoded_bytes``, so that a few hundred images
each under the pixel limit cannot exhaust the API's or a worker's memory. Read from the headers
alone: nothing is decoded before the sum is known.

The default, 256 MiB (67 M values: a 4-view 16-bit mammography exam of 4096 x 3328 images
fits, one 14000 x 14000 image does not), keeps a worker below 1.5 GB: the analysis holds
about 18 bytes per value at its peak (display, mask probabilities and labels at the original
size), measured at 1.38 GB for one 8192 x 8192 image.
"""

from __future__ import annotations

from collections.abc import Sequence

from imaging.decode import declared_size
from imaging.errors import ImagingError
from service.errors import ServiceError

WORKING_BYTES_PER_VALUE = 4  # float32, the display transform's output


class DecodedBudgetExceededError(ServiceError):
    """The images of one request would decode to more bytes than the request budget."""

    code = "decoded_budget_exceeded"
    title = "Images too large for one request"
    http_status = 413


def check_decoded_budget(inputs: Sequence[bytes], max_bytes: int) -> int:
    """The declared decoded bytes (float32) of ``inputs``; raises past ``max_bytes``.

    An input whose header cannot be read counts 0 here: decoding refuses it with its own
    typed error.

    Raises:
        DecodedBudgetExceededError: the sum is above ``max_bytes`` (413).
        ImagingError: a header is refused outright (e.g. a deflate bomb), ``input_index`` set.
    """
    total = 0
    for index, data in enumerate(inputs):
        try:
            size = declared_size(data)
        except ImagingError as exc:
            exc.context["input_index"] = index
            raise
        total += size.values * WORKING_BYTES_PER_VALUE if size is not None else 0
        if total > max_bytes:
            raise DecodedBudgetExceededError(
                f"the images up to input {index} declare {total} bytes of decoded pixels "
                f"(float32), more than the {max_bytes} byte budget of one request; send fewer "
                "or smaller images per request",
                max_request_decoded_bytes=max_bytes,
                input_index=index,
            )
    return total
