"""Every SEG, SR and SC breastdx writes passes the standard's validator and dcmtk's SR reader.

The matrix (``matrix.MATRIX``) holds every input kind accepted over DICOM; each runs through the
real pipeline (tiny models) and the real builders, with lesions found and with none. ``dciodvfy
-new`` (dicom3tools) must report no error and no warning whose cause is ours; ``dsrdump``
(dcmtk) must read every SR without a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models_registry.registry import Registry
from service.dicom.identity import parse_header, to_bytes
from service.dicom.outputs import build_outputs
from service.inference import analyse
from tests.service.dicom.conftest import dciodvfy, dsrdump
from tests.service.dicom.matrix import MATRIX, with_lesions, without_lesions

pytestmark = pytest.mark.integration

# Warnings about what the source holds (the outputs copy its Patient and Study modules as they
# are, PS3.3 C.7.1.1, C.7.2.1): an absent Study Date, Time or ID, a zero Patient Size or Weight.
SOURCE_WARNINGS = re.compile(
    r"^Warning - </(StudyDate|StudyTime|StudyID)\(.{9}\)> - Missing attribute or value that "
    r"would be needed to build DICOMDIR$"
    r"|^Warning - </(PatientSize|PatientWeight)\(.{9}\)\[1\]> - Value is zero$"
)
# A source that does not say which breast: the SC's Laterality is empty ("unknown").
UNKNOWN_SIDE = re.compile(r"^Warning - </Laterality\(0020,0060\)> - is only permitted to be empty")


@pytest.mark.parametrize("found", [True, False], ids=["lesions", "no-finding"])
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_outputs_pass_dciodvfy_and_dsrdump(
    registry: Registry, tmp_path: Path, case: str, found: bool
) -> None:
    spec = MATRIX[case]
    data = spec.make()
    analysis = analyse(spec.stage, [data], registry=registry)[0]
    analysis = with_lesions(analysis) if found else without_lesions(analysis)
    card = registry.card(analysis.result.model.ref)
    outputs = build_outputs(parse_header(data), analysis, card)
    assert (outputs.seg is not None) is found
    errors, ours = {}, {}
    for name, ds in [("seg", outputs.seg), ("sr", outputs.sr), ("sc", outputs.sc)]:
        if ds is None:
            continue
        found_errors, warnings = dciodvfy(to_bytes(ds), tmp_path, name)
        errors[name] = found_errors
        side_unknown = analysis.result.input.laterality.value not in ("L", "R")
        ours[name] = [
            w
            for w in warnings
            if not SOURCE_WARNINGS.match(w) and not (side_unknown and UNKNOWN_SIDE.match(w))
        ]
    assert {k: v for k, v in errors.items() if v} == {}
    assert {k: v for k, v in ours.items() if v} == {}
    status, out, err = dsrdump(to_bytes(outputs.sr), tmp_path, "sr-dump")
    assert status == 0, err
    assert "Warning" not in out + err and "Error" not in out + err, out + err


def test_validator_catches_a_missing_attribute(tmp_path: Path) -> None:
    """The check can fail: an SR without its SOP Instance UID is an error for dciodvfy."""
    from tests.imaging import dicom_factory as dcm
    from tests.service.dicom.conftest import ultrasound

    ds = ultrasound()
    del ds.SOPInstanceUID
    errors, _ = dciodvfy(dcm.to_bytes(ds), tmp_path, "broken")
    assert any("SOPInstanceUID" in line for line in errors)
