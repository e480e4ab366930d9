"""Errors of the HTTP service, the job queue and the API keys.

Each class has a stable ``code`` (a problem document's ``type`` is
``urn:breastdx:problem:<code>``) and a message that states the rule that was broken;
``service.problems`` renders them. Errors of the images themselves come from ``imaging.errors``
and ``service.inference.stages``.
Messages never carry patient identifiers, file names or secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from breastdx.errors import BreastdxError


class ServiceError(BreastdxError):
    """Base class of the service's own errors."""

    code = "service_error"
    title = "Service error"
    http_status = 500
    headers: ClassVar[dict[str, str]] = {}


class UnknownStageError(ServiceError):
    """The URL names a stage that does not exist."""

    code = "unknown_stage"
    title = "Unknown stage"
    http_status = 404


class JobNotFoundError(ServiceError):
    code = "job_not_found"
    title = "Unknown analysis job"
    http_status = 404


class ArtefactNotFoundError(ServiceError):
    """A mask or overlay that the job does not have (index out of range, or expired)."""

    code = "artefact_not_found"
    title = "No such result image"
    http_status = 404


class DicomOutputUnavailableError(ServiceError):
    """A DICOM SEG or SR asked of an input that has none.

    DICOM outputs need a DICOM input: they reference the source instance and copy its Patient
    and Study modules (``service.dicom.identity``), which a PNG, JPEG or TIFF does not have.
    The request cannot succeed later either, hence 422 and not the 409 of a job still running.
    """

    code = "dicom_output_unavailable"
    title = "No DICOM output for this input"
    http_status = 422


class JobNotFinishedError(ServiceError):
    """Result images exist only once the job has succeeded."""

    code = "job_not_finished"
    title = "Analysis not finished"
    http_status = 409


class QueueUnavailableError(ServiceError):
    """Redis (the queue and the job store) cannot be reached; the client should retry."""

    code = "queue_unavailable"
    title = "Queue unavailable"
    http_status = 503


class ServiceBusyError(ServiceError):
    """The in-process executor has as many jobs pending as it accepts."""

    code = "service_busy"
    title = "Too many analyses pending"
    http_status = 503


class RequestTooLargeError(ServiceError):
    code = "request_too_large"
    title = "Request too large"
    http_status = 413


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"
    title = "Unsupported media type"
    http_status = 415


class MalformedRequestError(ServiceError):
    """The multipart body cannot be parsed, or has fields the endpoint does not take."""

    code = "malformed_request"
    title = "Malformed request body"
    http_status = 400


class NoInputError(ServiceError):
    code = "no_input"
    title = "No image in the request"
    http_status = 422


class TooManyInputsError(ServiceError):
    code = "too_many_inputs"
    title = "Too many images in one request"
    http_status = 413


class IdempotencyKeyReusedError(ServiceError):
    """The same ``Idempotency-Key`` was sent before with another request."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused with another request"
    http_status = 422


class InvalidIdempotencyKeyError(ServiceError):
    code = "invalid_idempotency_key"
    title = "Invalid Idempotency-Key"
    http_status = 400


class UnknownHookError(ServiceError):
    """A job asked for a post-success hook that no module registered."""

    code = "unknown_hook"
    title = "Unknown post-analysis hook"
    http_status = 422


class UploadExpiredError(ServiceError):
    """A worker found the job's uploaded images gone (their TTL passed before it ran)."""

    code = "upload_expired"
    title = "Uploaded images expired"
    http_status = 410


class AuthenticationRequiredError(ServiceError):
    code = "authentication_required"
    title = "API key required"
    http_status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="breastdx"'}


class InvalidApiKeyError(ServiceError):
    """Unknown, malformed or revoked key; one code for all so that keys cannot be probed."""

    code = "invalid_api_key"
    title = "Invalid API key"
    http_status = 401
    headers: ClassVar[dict[str, str]] = {
        "WWW-Authenticate": 'Bearer realm="breastdx", error="invalid_token"'
    }


class InsufficientScopeError(ServiceError):
    code = "insufficient_scope"
    title = "API key lacks the scope"
    http_status = 403


class InvalidApiKeyNameError(ServiceError):
    """A key name or scope the command line cannot accept."""

    code = "invalid_api_key_request"
    title = "Invalid API key name or scope"
    http_status = 422


class UnknownApiKeyError(ServiceError):
    """The key id given to the command line names no key."""

    code = "unknown_api_key"
    title = "Unknown API key id"
    http_status = 404


class RateLimitedError(ServiceError):
    code = "rate_limited"
    title = "Too many requests"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
