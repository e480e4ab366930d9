"""Typed errors of the model registry.

Each class has a stable ``code`` (the ``type`` of the API's problem document) and a message that
states the rule that was broken. Messages name models, versions, aliases and shortened hashes;
never file contents.
"""

from __future__ import annotations

from collections.abc import Iterable

from breastdx.errors import BreastdxError


def short_hash(sha256: str) -> str:
    """The first 12 hex digits of a sha256: enough to tell two files apart in a message."""
    return sha256[:12]


def _listing(values: Iterable[object]) -> str:
    items = [str(v) for v in values]
    return ", ".join(items) if items else "(none)"


class RegistryError(BreastdxError):
    """Base class: the model registry or one of its stores refused an operation."""

    code = "model_registry_error"
    title = "Model registry error"
    http_status = 500


class InvalidModelRefError(RegistryError):
    """A model name or reference does not follow the naming rules."""

    code = "invalid_model_ref"
    title = "Invalid model reference"
    http_status = 422


class InvalidAliasError(RegistryError):
    """An alias name does not follow the naming rules."""

    code = "invalid_alias"
    title = "Invalid alias"
    http_status = 422


class InvalidCardError(RegistryError):
    """A model card (or card draft) does not validate against the card schema."""

    code = "invalid_model_card"
    title = "Invalid model card"
    http_status = 422


class CardMismatchError(RegistryError):
    """An ONNX file's inputs or outputs do not match what its card says."""

    code = "model_card_mismatch"
    title = "ONNX model does not match its card"
    http_status = 422


class UnknownModelError(RegistryError):
    code = "unknown_model"
    title = "Unknown model"
    http_status = 404

    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        super().__init__(
            f"unknown model {name!r}; known models: {_listing(known)}", model=name, known=known
        )


class UnknownVersionError(RegistryError):
    code = "unknown_model_version"
    title = "Unknown model version"
    http_status = 404

    def __init__(self, name: str, version: int, versions: Iterable[int]) -> None:
        versions = sorted(versions)
        super().__init__(
            f"model {name!r} has no version {version}; valid versions: {_listing(versions)}",
            model=name,
            version=version,
            valid=versions,
        )


class UnknownAliasError(RegistryError):
    code = "unknown_model_alias"
    title = "Unknown model alias"
    http_status = 404

    def __init__(self, name: str, alias: str, aliases: Iterable[str]) -> None:
        aliases = sorted(aliases)
        super().__init__(
            f"model {name!r} has no alias {alias!r}; valid aliases: {_listing(aliases)}"
            " (or a version number, or 'latest')",
            model=name,
            alias=alias,
            valid=aliases,
        )


class DuplicateVersionError(RegistryError):
    """Versions are immutable: an existing version is never overwritten."""

    code = "duplicate_model_version"
    title = "Model version already exists"
    http_status = 409

    def __init__(self, name: str, version: int) -> None:
        super().__init__(
            f"{name}@{version} already exists and versions are immutable; register a new version",
            model=name,
            version=version,
        )


class ModelIntegrityError(RegistryError):
    """An ONNX file's sha256 differs from the one its card recorded at registration."""

    code = "model_integrity"
    title = "Model file failed its integrity check"
    http_status = 500

    def __init__(self, name: str, version: int, file: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name}@{version}: {file} has sha256 {short_hash(actual)}..., but its card records "
            f"{short_hash(expected)}...; the file was changed after registration and is refused",
            model=name,
            version=version,
            file=file,
            expected_sha256=short_hash(expected),
            actual_sha256=short_hash(actual),
        )


class StoreError(RegistryError):
    """A store could not be read or written (missing file, I/O error, malformed aliases)."""

    code = "model_store_error"
    title = "Model store error"


class UnknownStoreSchemeError(StoreError):
    code = "unknown_store_scheme"
    title = "Unknown model store scheme"
    http_status = 400

    def __init__(self, scheme: str, known: Iterable[str]) -> None:
        known = sorted(known)
        super().__init__(
            f"no store is registered for scheme {scheme!r}; known schemes: "
            f"{_listing(s + '://' for s in known)}, or a plain directory path",
            scheme=scheme,
            known=known,
        )


class RuntimeUnavailableError(RegistryError):
    """A runtime was asked for whose Python package is not installed here."""

    code = "runtime_unavailable"
    title = "Inference runtime not installed"
    http_status = 503

    def __init__(self, runtime: str, reason: str) -> None:
        super().__init__(
            f"runtime {runtime!r} is not installed in this environment ({reason}); install the "
            "'serve' extra (pip install -c constraints.txt -e '.[serve]') or choose another "
            "runtime (BREASTDX_RUNTIME=auto|onnxruntime|openvino|openvino-bf16|onnxruntime-int8|"
            "openvino-int8)",
            runtime=runtime,
        )


class RuntimeUnsupportedError(RuntimeUnavailableError):
    """A runtime was asked for whose precision this CPU does not compute: ``openvino-bf16`` on a
    CPU without bf16 units, where OpenVINO would run float32 under the bf16 name (and a card's
    bf16 figures would be float32's)."""

    code = "runtime_unsupported"
    title = "Inference runtime not supported by this CPU"

    def __init__(self, runtime: str, reason: str) -> None:
        RegistryError.__init__(
            self,
            f"runtime {runtime!r} cannot run on this CPU: {reason}; choose another runtime "
            "(BREASTDX_RUNTIME=auto chooses among those this CPU runs)",
            runtime=runtime,
        )


class RuntimeLoadError(RegistryError):
    """A runtime refused to load a registered ONNX file."""

    code = "runtime_load_failed"
    title = "Inference runtime could not load the model"
    http_status = 500

    def __init__(self, runtime: str, file: str, reason: str) -> None:
        super().__init__(f"{runtime} could not load {file}: {reason}", runtime=runtime, file=file)


class RuntimeNotAllowedError(RegistryError):
    """A model's card lists the runtimes it may run on, and the one asked for is not among them."""

    code = "runtime_not_allowed"
    title = "Runtime not allowed by the model card"
    http_status = 503

    def __init__(self, model: str, runtime: str, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        super().__init__(
            f"{model}: its card lets it run on {_listing(allowed)}, not {runtime!r}; choose one "
            "of those (BREASTDX_RUNTIME) or 'auto'",
            model=model,
            runtime=runtime,
            allowed=allowed,
        )


class RuntimeParityError(RegistryError):
    """A runtime's outputs differ from ONNX Runtime on CPU by more than the card's tolerance."""

    code = "runtime_parity_failed"
    title = "Runtime failed the parity gate"
    http_status = 503

    def __init__(self, model: str, runtime: str, figures: str) -> None:
        super().__init__(
            f"{model} on {runtime} does not reproduce ONNX Runtime on CPU within the card's "
            f"tolerance ({figures}); this runtime is not used for it",
            model=model,
            runtime=runtime,
        )
