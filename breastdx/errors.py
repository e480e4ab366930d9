"""The project's one error hierarchy.

Every error a user can cause carries a stable ``code`` (it becomes the ``type`` of an RFC 9457
problem document in the API, a DICOM failure comment in the listener and the ``error.code`` of a
CLI JSON line) and a message that states the rule that was broken. Messages never contain patient
identifiers or pixel values.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BreastdxError(Exception):
    """Base class of every error breastdx raises on purpose."""

    code: ClassVar[str] = "breastdx_error"
    title: ClassVar[str] = "breastdx error"
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: ``{"code", "title", "message", **context}``."""
        return {"code": self.code, "title": self.title, "message": self.message, **self.context}
