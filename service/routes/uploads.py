"""Reading the images of a multipart request: ``file`` parts only, image media types only."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.errors import MalformedRequestError, UnsupportedMediaTypeError

FILE_FIELD = "file"
IMAGE_MEDIA_TYPES = frozenset(
    {
        "application/dicom",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "image/x-portable-graymap",
        "application/octet-stream",
    }
)
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "DICOM, PNG, JPEG or TIFF images (repeat the part)",
                        }
                    },
                }
            }
        },
    }
}


@dataclass(frozen=True)
class Images:
    data: list[bytes]
    filenames: list[str | None]


def _media_type(part: UploadFile) -> str | None:
    value = (part.content_type or "").split(";")[0].strip().lower()
    return value or None


async def read_images(request: Request) -> Images:
    """The ``file`` parts' bytes in order (the body size limit applies while reading).

    Raises:
        UnsupportedMediaTypeError: the body is not multipart, or a part is not an image type.
        MalformedRequestError: the multipart body cannot be parsed or has other fields.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send images as multipart/form-data 'file' parts, not {media_type or 'no body type'}",
            accepted=["multipart/form-data"],
        )
    try:
        form = await request.form(max_files=1_000_000, max_fields=16)
    except HTTPException as exc:
        raise MalformedRequestError(f"the multipart body cannot be parsed: {exc.detail}") from None
    try:
        others = sorted({key for key in form if key != FILE_FIELD})
        if others:
            raise MalformedRequestError(
                f"unexpected form field(s) {others}; images go in '{FILE_FIELD}' parts"
            )
        parts = form.getlist(FILE_FIELD)
        images = Images([], [])
        for index, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise MalformedRequestError(f"part {index} of '{FILE_FIELD}' is not a file")
            kind = _media_type(part)
            if kind is not None and kind not in IMAGE_MEDIA_TYPES:
                raise UnsupportedMediaTypeError(
                    f"part {index} is {kind}; accepted: {', '.join(sorted(IMAGE_MEDIA_TYPES))}",
                    accepted=sorted(IMAGE_MEDIA_TYPES),
                    input_index=index,
                )
            images.data.append(await part.read())
            images.filenames.append(part.filename)
        return images
    finally:
        await form.close()
