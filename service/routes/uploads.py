"""Reading the images of a multipart request: ``file`` parts only, image media types only.

Limits hold while the body is parsed, not after: at most ``max_files`` file parts (the parser
stops at the next one, so a million one-byte parts cost no more than ``max_files + 1``) and
``MAX_FORM_FIELDS`` other parts. The caller then checks the images' headers against the
request's budget of decoded bytes (``service.security.budget.check_decoded_budget``) before
anything is decoded, on the thread that submits them (one hop off the event loop, not two). A
client that goes away mid-upload is a client abort (499 in metrics and the access log), not a
server error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.config import Settings
from service.errors import MalformedRequestError, TooManyInputsError, UnsupportedMediaTypeError
from service.security.upload import ClientClosedRequestError

logger = logging.getLogger(__name__)
MAX_FORM_FIELDS = 16  # non-file parts the parser keeps before refusing (none is accepted)

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
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "DICOM, PNG, JPEG, TIFF or PGM images, one per "
                            "part (repeat the part, at least one); no other form fields",
                        }
                    },
                    "additionalProperties": False,
                },
                "encoding": {FILE_FIELD: {"contentType": ", ".join(sorted(IMAGE_MEDIA_TYPES))}},
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


async def _parse_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except ClientDisconnect:
        logger.info("client closed the connection during the upload (client abort)")
        raise ClientClosedRequestError(
            "the client closed the connection during the upload"
        ) from None
    except HTTPException as exc:
        if str(exc.detail).startswith("Too many files"):
            raise TooManyInputsError(
                f"more than {max_files} 'file' parts; send at most {max_files} images per request",
                max_files=max_files,
            ) from None
        raise MalformedRequestError(f"the multipart body cannot be parsed: {exc.detail}") from None


async def read_images(request: Request) -> Images:
    """The ``file`` parts' bytes in order (the body size limit applies while reading).

    Raises:
        UnsupportedMediaTypeError: the body is not multipart, or a part is not an image type.
        MalformedRequestError: the multipart body cannot be parsed or has other fields.
        TooManyInputsError: more than ``max_files`` parts (found while parsing).
        ClientClosedRequestError: the client went away before the body was read (499).
    """
    settings: Settings = request.app.state.settings
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send images as multipart/form-data 'file' parts, not {media_type or 'no body type'}",
            accepted=["multipart/form-data"],
        )
    form = await _parse_form(request, settings.max_files)
    try:
        return await _collect(form)
    finally:
        await form.close()


async def _collect(form: FormData) -> Images:
    others = sorted({key for key in form if key != FILE_FIELD})
    if others:
        raise MalformedRequestError(
            f"unexpected form field(s) {others}; images go in '{FILE_FIELD}' parts"
        )
    images = Images([], [])
    for index, part in enumerate(form.getlist(FILE_FIELD)):
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
