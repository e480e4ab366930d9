"""Results that could not be delivered: one folder per record, for an operator to list and replay.

``<spool>/deadletter/<id>/`` holds the DICOM files (``1.dcm``, ``2.dcm``, ...) and
``record.json`` (source SOP Instance UID, model, pending destinations, attempts, last errors).
The files contain patient data (they are DICOM results for the PACS); ``record.json`` does not.
Ids are generated here (UTC time + random suffix) and checked before any path is built from one.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from breastdx.errors import BreastdxError

RECORD_FILE: Final = "record.json"
ID_PATTERN: Final = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class DeadLetterNotFoundError(BreastdxError):
    """No dead-letter record has this id."""

    code = "dead_letter_not_found"
    title = "Dead-letter record not found"
    http_status = 404


class DeadLetter(BaseModel):
    """One undelivered set of results (no patient identifiers: UIDs and names only)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created: datetime
    source_sop_instance_uid: str
    model: str
    files: list[str]
    pending: list[str] = Field(description="destinations that did not acknowledge")
    attempts: int = Field(ge=0)
    errors: dict[str, str] = Field(default_factory=dict, description="last error per destination")
    replays: int = Field(default=0, ge=0)


class DeadLetters:
    """The dead-letter folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, letter_id: str) -> Path:
        if not ID_PATTERN.match(letter_id):
            raise DeadLetterNotFoundError(
                f"{letter_id!r} is not a dead-letter id (YYYYMMDDTHHMMSSZ-xxxxxxxx)"
            )
        folder = self.root / letter_id
        if not (folder / RECORD_FILE).is_file():
            raise DeadLetterNotFoundError(f"no dead-letter record {letter_id}")
        return folder

    def add(
        self,
        instances: Sequence[bytes],
        *,
        source_sop_instance_uid: str,
        model: str,
        pending: Sequence[str],
        attempts: int,
        errors: dict[str, str],
    ) -> DeadLetter:
        """Write a new record with ``instances``; returns it."""
        now = datetime.now(UTC)
        letter_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        folder = self.root / letter_id
        folder.mkdir(parents=True, mode=0o700)
        files = []
        for index, data in enumerate(instances, start=1):
            name = f"{index}.dcm"
            (folder / name).write_bytes(data)
            files.append(name)
        letter = DeadLetter(
            id=letter_id,
            created=now,
            source_sop_instance_uid=source_sop_instance_uid,
            model=model,
            files=files,
            pending=list(pending),
            attempts=attempts,
            errors=errors,
        )
        self.save(letter)
        return letter

    def save(self, letter: DeadLetter) -> None:
        folder = self.root / letter.id
        tmp = folder / f".{RECORD_FILE}.tmp"
        tmp.write_text(letter.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(folder / RECORD_FILE)

    def get(self, letter_id: str) -> DeadLetter:
        text = (self._folder(letter_id) / RECORD_FILE).read_text(encoding="utf-8")
        return DeadLetter.model_validate(json.loads(text))

    def all(self) -> list[DeadLetter]:
        """Every record, oldest first."""
        if not self.root.is_dir():
            return []
        ids = sorted(p.name for p in self.root.iterdir() if ID_PATTERN.match(p.name))
        return [self.get(i) for i in ids if (self.root / i / RECORD_FILE).is_file()]

    def instances(self, letter: DeadLetter) -> list[bytes]:
        folder = self._folder(letter.id)
        return [(folder / name).read_bytes() for name in letter.files]

    def remove(self, letter_id: str) -> None:
        shutil.rmtree(self._folder(letter_id))
