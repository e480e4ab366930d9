"""The model registry: numbered immutable versions, movable aliases, checked loads.

References name a model version: ``"name@3"`` (a version), ``"name@production"`` (an alias),
``"name@latest"`` (the newest version) or ``"name"`` (the ``production`` alias where it is set,
else the newest version). Every :meth:`Registry.load` recomputes the ONNX file's sha256 and
refuses a file that differs from its card.

The registry reads several stores in order (the shipped store first, then extra ones); a model
name belongs to the first store that holds it. New names are registered into the first store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models_registry.card import (
    FP16_FILE,
    INT8_FILE,
    ONNX_FILE,
    CardDraft,
    Fp16Artifact,
    Int8Artifact,
    ModelCard,
    OnnxArtifact,
    parse_card,
)
from models_registry.contract import Check, contract_checks, runtime_checks
from models_registry.errors import (
    CardMismatchError,
    InvalidAliasError,
    InvalidCardError,
    InvalidModelRefError,
    ModelIntegrityError,
    RegistryError,
    StoreError,
    UnknownAliasError,
    UnknownModelError,
    UnknownVersionError,
)
from models_registry.settings import registry_settings
from models_registry.store import (
    Store,
    open_store,
    sha256_file,
    validate_name,
)

logger = logging.getLogger(__name__)

PRODUCTION = "production"
LATEST = "latest"  # reserved: always the newest version, never stored
ALIAS_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION = re.compile(r"^[1-9][0-9]*$")


@dataclass(frozen=True)
class ModelVersion:
    """A resolved reference."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A card and the local path of its ONNX file, whose sha256 matched the card."""

    card: ModelCard
    onnx_path: Path
    fp16: bool = False

    @property
    def ref(self) -> str:
        return self.card.ref


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :meth:`Registry.verify` for one version."""

    name: str
    version: int
    store: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "store": self.store,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it may be assigned, else raise :class:`InvalidAliasError`."""
    if alias == LATEST:
        raise InvalidAliasError(f"alias {LATEST!r} is reserved: it always means the newest version")
    if not _ALIAS.match(alias):
        raise InvalidAliasError(
            f"alias {alias!r} is invalid: aliases are 1-32 characters of lowercase letters, "
            "digits and '-', starting with a letter (e.g. 'production', 'staging')"
        )
    return alias


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``"name@selector"`` into name and selector (None when absent)."""
    name, sep, selector = ref.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    if not (_VERSION.match(selector) or _ALIAS.match(selector)):
        raise InvalidModelRefError(
            f"model reference {ref!r} is invalid: use NAME, NAME@VERSION or NAME@ALIAS"
        )
    return name, selector


class Registry:
    """Models in one or more stores; the first store holding a name owns it."""

    def __init__(self, stores: Sequence[Store | Path | str]) -> None:
        if not stores:
            raise StoreError("a registry needs at least one store")
        self.stores: tuple[Store, ...] = tuple(open_store(s) for s in stores)

    @classmethod
    def default(cls, primary: Path | str | None = None) -> Registry:
        """The stores of ``models_registry.settings``: ``primary`` (else ``$BREASTDX_MODEL_STORE``,
        else the shipped store), then ``$BREASTDX_EXTRA_MODEL_STORES``."""
        return cls(registry_settings().locations(primary))

    def names(self) -> list[str]:
        """Every model name in any store, sorted."""
        return sorted({name for store in self.stores for name in store.names()})

    def store_of(self, name: str) -> Store:
        """The store that owns ``name``; raises :class:`UnknownModelError` listing known names."""
        return self._owner(name)[0]

    def _owner(self, name: str) -> tuple[Store, list[int]]:
        """The store that owns ``name`` and its versions there (one listing of each store)."""
        validate_name(name)
        for store in self.stores:
            versions = store.versions(name)
            if versions:
                return store, versions
        raise UnknownModelError(name, self.names())

    def versions(self, name: str) -> list[int]:
        """Version numbers of ``name``, ascending."""
        return self.store_of(name).versions(name)

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of ``name``."""
        return self.store_of(name).read_aliases(name)

    def resolve(self, ref: str) -> ModelVersion:
        """``name``, ``name@3``, ``name@latest`` or ``name@alias`` -> a version that exists."""
        return self._locate(ref)[1]

    def _locate(self, ref: str) -> tuple[Store, ModelVersion]:
        """:meth:`resolve`, with the store that holds the version."""
        name, selector = parse_ref(ref)
        store, versions = self._owner(name)
        if selector == LATEST:
            return store, ModelVersion(name, versions[-1])
        if selector is not None and _VERSION.match(selector):
            if int(selector) not in versions:
                raise UnknownVersionError(name, int(selector), versions)
            return store, ModelVersion(name, int(selector))
        aliases = store.read_aliases(name)
        if selector is None and PRODUCTION not in aliases:
            return store, ModelVersion(name, versions[-1])
        alias = selector or PRODUCTION
        if alias not in aliases:
            raise UnknownAliasError(name, alias, aliases)
        if aliases[alias] not in versions:
            raise StoreError(f"alias {name}@{alias} points to missing version {aliases[alias]}")
        return store, ModelVersion(name, aliases[alias])

    def card(self, ref: str) -> ModelCard:
        """The card of the version ``ref`` resolves to (the ONNX file is not read)."""
        store, found = self._locate(ref)
        return store.read_card(found.name, found.version)

    def load(self, ref: str, *, fp16: bool = False) -> LoadedModel:
        """Resolve ``ref`` and check the ONNX file's sha256 against its card.

        Raises:
            ModelIntegrityError: the file differs from the one registered.
        """
        store, found = self._locate(ref)
        card = store.read_card(found.name, found.version)
        artifact: OnnxArtifact | Fp16Artifact | None = card.onnx.fp16 if fp16 else card.onnx
        if artifact is None:
            raise RegistryError(f"{card.ref} has no fp16 variant", model=card.name)
        path = store.onnx_path(found.name, found.version, artifact.file)
        _check_integrity(card, path, artifact.file, artifact.sha256)
        if card.onnx.int8 is not None and not fp16:  # the int8 runtimes open it beside path
            int8 = card.onnx.int8
            int8_path = store.onnx_path(found.name, found.version, int8.file)
            _check_integrity(card, int8_path, int8.file, int8.sha256)
        logger.info("model loaded", extra={"model": card.ref, "file": artifact.file})
        return LoadedModel(card=card, onnx_path=path, fp16=fp16)

    def register(
        self,
        name: str,
        onnx_path: Path,
        draft: CardDraft | Mapping[str, Any],
        *,
        fp16_path: Path | None = None,
        int8_path: Path | None = None,
        alias: str | None = None,
        check_contract: bool = True,
    ) -> ModelCard:
        """Store ``onnx_path`` as the next version of ``name`` with the card made from ``draft``.

        Validates ``input.preprocess``, checks (unless told not to) that the ONNX inputs and
        outputs match the draft, computes sha256 and size, writes the version atomically and
        sets ``alias`` if given.

        Raises:
            InvalidCardError: the draft does not validate or names another model.
            CardMismatchError: the ONNX file does not match the draft.
            DuplicateVersionError: another writer took the version number first.
        """
        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        draft = _as_draft(draft, name, fp16_path, int8_path)
        draft.preprocess_config()
        files = {ONNX_FILE: Path(onnx_path)} | ({FP16_FILE: Path(fp16_path)} if fp16_path else {})
        files |= {INT8_FILE: Path(int8_path)} if int8_path else {}
        for file, path in files.items():
            if not path.is_file():
                raise StoreError(f"{file} source {path} is not a file")
        if check_contract:
            _require_contract(name, draft, files)
        store = next((s for s in self.stores if s.versions(name)), self.stores[0])
        version = max(store.versions(name), default=0) + 1
        card = _card_from_draft(draft, name, version, files)
        store.put_version(card, files)
        logger.info("model registered", extra={"model": card.ref, "store": store.uri})
        if alias is not None:
            self.promote(name, version, alias)
        return card

    def promote(self, name: str, version: int, alias: str) -> int | None:
        """Point ``alias`` of ``name`` at ``version``; returns the version it pointed at before."""
        validate_alias(alias)
        store = self.store_of(name)
        versions = store.versions(name)
        if version not in versions:
            raise UnknownVersionError(name, version, versions)
        aliases = store.read_aliases(name)
        previous = aliases.get(alias)
        store.write_aliases(name, {**aliases, alias: version})
        logger.info("alias moved", extra={"model": f"{name}@{version}", "alias": alias})
        return previous

    def verify(self, ref: str | None = None, *, runtimes: bool = False) -> list[VerifyReport]:
        """Check card, preprocessing, hash, ONNX Runtime load and the input/output contract.

        Args:
            ref: one version to check; None checks every version of every model.
            runtimes: also run the parity gate of every other installed runtime the card allows
                (``contract.runtime_checks``) on the main ONNX file.
        """
        if ref is not None:
            found = self.resolve(ref)
            return [self._verify_one(found.name, found.version, runtimes)]
        return [
            self._verify_one(name, version, runtimes)
            for name in self.names()
            for version in self.versions(name)
        ]

    def _verify_one(self, name: str, version: int, runtimes: bool = False) -> VerifyReport:
        store = self.store_of(name)
        checks: list[Check] = []
        try:
            card = store.read_card(name, version)
            checks.append(Check("card", True, f"schema version {card.card_schema_version}"))
            card.preprocess_config()
            checks.append(Check("preprocess", True, "imaging.preprocess.PreprocessConfig"))
            artifacts: list[OnnxArtifact | Fp16Artifact | Int8Artifact] = [card.onnx]
            artifacts += [card.onnx.fp16] if card.onnx.fp16 else []
            artifacts += [card.onnx.int8] if card.onnx.int8 else []
            for artifact in artifacts:
                path = store.onnx_path(name, version, artifact.file)
                _check_integrity(card, path, artifact.file, artifact.sha256)
                checks.append(Check(f"sha256 {artifact.file}", True, artifact.sha256[:12]))
                checks += contract_checks(
                    card.input, card.outputs, path, fp16=artifact.file == FP16_FILE
                )
            if runtimes and all(c.ok for c in checks):
                checks += runtime_checks(card, store.onnx_path(name, version, ONNX_FILE))
        except RegistryError as exc:
            checks.append(Check(exc.code, False, exc.message))
        return VerifyReport(name, version, store.uri, tuple(checks))


def _check_integrity(card: ModelCard, path: Path, file: str, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        logger.error("model integrity check failed", extra={"model": card.ref, "file": file})
        raise ModelIntegrityError(card.name, card.version, file, expected, actual)


def _as_draft(
    draft: CardDraft | Mapping[str, Any], name: str, fp16: Path | None, int8: Path | None = None
) -> CardDraft:
    if not isinstance(draft, CardDraft):
        draft = parse_card(CardDraft, draft, source=f"the card draft for {name!r}")
    if draft.name is not None and draft.name != name:
        raise InvalidCardError(f"the card draft names model {draft.name!r}, not {name!r}")
    if (draft.onnx.fp16 is None) != (fp16 is None):
        raise InvalidCardError(
            "an fp16 file and the card's onnx.fp16 parity figures go together: give both or neither"
        )
    if (draft.onnx.int8 is None) != (int8 is None):
        raise InvalidCardError(
            "an int8 file and the card's onnx.int8 quantisation facts go together: give both or "
            "neither"
        )
    return draft


def _require_contract(name: str, draft: CardDraft, files: Mapping[str, Path]) -> None:
    failed = [
        check
        for file, path in files.items()
        for check in contract_checks(draft.input, draft.outputs, path, fp16=file == FP16_FILE)
        if not check.ok
    ]
    if failed:
        details = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise CardMismatchError(f"the ONNX file does not match the card for {name!r}: {details}")


def _card_from_draft(
    draft: CardDraft, name: str, version: int, files: Mapping[str, Path]
) -> ModelCard:
    fp16 = None
    if draft.onnx.fp16 is not None:
        path = files[FP16_FILE]
        fp16 = Fp16Artifact(
            sha256=sha256_file(path), size_bytes=path.stat().st_size, parity=draft.onnx.fp16.parity
        )
    int8 = None
    if draft.onnx.int8 is not None:
        path = files[INT8_FILE]
        int8 = Int8Artifact(
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            quantization=draft.onnx.int8.quantization,
        )
    onnx = OnnxArtifact(
        sha256=sha256_file(files[ONNX_FILE]),
        size_bytes=files[ONNX_FILE].stat().st_size,
        opset=draft.onnx.opset,
        fp16=fp16,
        int8=int8,
    )
    body = draft.model_dump(exclude={"name", "onnx"})
    return ModelCard(name=name, version=version, registered_at=datetime.now(UTC), onnx=onnx, **body)
