"""A pixel decoder's own traceback never reaches stderr or the logs; the caller gets the typed
error (issue 14). pydicom logs every failing decoding plugin with ``LOGGER.exception``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate

from imaging import decode
from imaging.errors import CorruptImageError
from tests.conftest import REPO_ROOT
from tests.imaging import dicom_factory as dcm


def broken_jpeg_12bit() -> bytes:
    """A 12-bit JPEG Extended MG whose entropy-coded data is garbage: markers intact (the guard
    lets it through), Pillow refuses 12-bit samples, libjpeg fails on the Huffman codes."""
    ds, pixels = dcm.mammogram(bits_stored=12)
    frame = bytearray(imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12))
    start = frame.find(b"\xff\xda")
    start += 2 + int.from_bytes(frame[start + 2 : start + 4], "big")  # after the SOS header
    junk = np.random.default_rng(1).integers(0, 255, len(frame) - start - 2, dtype=np.uint8)
    frame[start:-2] = bytes(junk).replace(b"\xff", b"\xfe")
    encoded = dcm.encode(ds, uid.JPEGExtended12Bit)
    encoded.PixelData = encapsulate([bytes(frame)])
    return dcm.to_bytes(encoded)


def test_the_typed_error_names_every_decoders_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CorruptImageError) as caught:
        decode(broken_jpeg_12bit())
    assert "every decoder failed" in caught.value.message
    assert "Pillow does not support 'JPEG Extended'" in caught.value.message
    assert not [r for r in caplog.records if r.exc_info is not None]
    assert "Traceback" not in caplog.text


def test_no_traceback_on_stderr_with_logging_configured(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(broken_jpeg_12bit())
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "from imaging import decode\n"
        "from imaging.errors import ImagingError\n"
        "try:\n"
        f"    decode(open({str(path)!r}, 'rb').read())\n"
        "except ImagingError as exc:\n"
        "    print(exc.code, file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "NotImplementedError" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "corrupt_image"
