"""Where registered models live: the :class:`Store` protocol, the directory store, the scheme map.

Directory layout (one folder per model name, one per immutable version)::

    <root>/<name>/<version>/model.onnx        the ONNX file (read-only once written)
    <root>/<name>/<version>/model.fp16.onnx   optional fp16 variant
    <root>/<name>/<version>/card.json         its ModelCard
    <root>/<name>/aliases.json                {"production": 3, "staging": 4}
    <root>/.staging/                          temporary folders of writes in progress

A version is written into ``.staging/`` first and renamed into place in one step, so a reader
sees either no version or a complete one; a crash leaves at most a folder in ``.staging/``
(safe to delete). Aliases are rewritten through a temporary file and ``os.replace``.

Extension point for object stores: implement :class:`Store` and register a factory for its
scheme, e.g.::

    @register_store_scheme("s3")
    def _s3_store(uri: str) -> Store:
        return S3Store.from_uri(uri)  # "s3://bucket/prefix"

Such a store returns a local cached copy from :meth:`Store.onnx_path` (the registry checks its
sha256 against the card on every load, so a stale cache is refused, never used), and
writes a version's files under a temporary key, then ``card.json`` last as the commit marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import TypeAdapter, ValidationError

from models_registry.card import (
    FP16_FILE,
    INT8_FILE,
    NAME_PATTERN,
    ONNX_FILE,
    ModelCard,
    read_card,
)
from models_registry.errors import (
    DuplicateVersionError,
    InvalidCardError,
    InvalidModelRefError,
    StoreError,
    UnknownStoreSchemeError,
)

SHIPPED_STORE = Path(__file__).resolve().parent / "store"
EXTRA_STORES_ENV = "BREASTDX_EXTRA_MODEL_STORES"  # comma-separated paths or URIs
CARD_FILE = "card.json"
ALIASES_FILE = "aliases.json"
STAGING_DIR = ".staging"
VERSION_FILES = frozenset({ONNX_FILE, FP16_FILE, INT8_FILE})
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")
_NAME = re.compile(NAME_PATTERN)
_ALIASES = TypeAdapter(dict[str, int])
_CHUNK = 1 << 20
_CARD_CACHE_SIZE = 1024
T = TypeVar("T")


class _Memo:
    """Values by key, each kept with the signature it was read under (stat figures); a look-up
    with another signature reads again. At most ``_CARD_CACHE_SIZE`` entries (then cleared)."""

    def __init__(self) -> None:
        self._items: dict[object, tuple[tuple[int, ...], object]] = {}
        self._lock = threading.Lock()

    def get(self, key: object, signature: tuple[int, ...], read: Callable[[], T]) -> T:
        with self._lock:
            cached = self._items.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]  # type: ignore[return-value]  # stored by the same key's reader
        value = read()
        with self._lock:
            if len(self._items) >= _CARD_CACHE_SIZE:
                self._items.clear()
            self._items[key] = (signature, value)
        return value


class _CardCache:
    """Parsed ``card.json`` files by path, read again only when the file changed (mtime, size or
    inode): a version's card never changes once written, so a request that pins a model costs a
    ``stat`` per card, not a read and a validation."""

    def __init__(self) -> None:
        self._memo = _Memo()

    def get(self, path: Path, read: Callable[[Path], ModelCard]) -> ModelCard | None:
        """The card at ``path`` (``read`` on a miss); None when there is no such file."""
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        return self._memo.get(os.fspath(path), signature, lambda: read(path))


_CARDS = _CardCache()
_SETTLED_NS = 2_000_000_000  # a folder changed this recently is read again (coarse clocks)


class _FolderMemo:
    """What was read from a model's folder (its versions, its aliases), read again only when
    the folder or the file read changed: a new version comes in by a rename into the folder, a
    retired one leaves it, and an alias file is replaced by a rename (or rewritten in place, which
    moves the file's own mtime), each of which moves an mtime stamped here. A path modified in the
    last two seconds is always read again, so a clock or file system with coarse timestamps
    cannot hide a change made within one tick of a read. A pin then costs a ``stat`` or two per
    folder instead of a directory scan and a JSON read."""

    def __init__(self) -> None:
        self._memo = _Memo()

    @staticmethod
    def _signature(paths: Sequence[Path]) -> tuple[int, ...] | None:
        """mtime, inode and size of each path (-1s for a missing one); None while one of them
        changed too recently to be trusted, or where the folder cannot be read."""
        signature: list[int] = []
        now = time.time_ns()
        for path in paths:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                signature += [-1, -1, -1]
                continue
            except OSError:
                return None
            if now - info.st_mtime_ns < _SETTLED_NS:
                return None
            signature += [info.st_mtime_ns, info.st_ino, info.st_size]
        return tuple(signature)

    def get(self, folder: Path, what: str, read: Callable[[], T], *files: Path) -> T:
        signature = self._signature([folder, *files])
        if signature is None:
            return read()
        return self._memo.get((os.fspath(folder), what), signature, read)


_FOLDERS = _FolderMemo()


def _scan_versions(folder: Path) -> tuple[int, ...]:
    """The version numbers with a card in a model's folder, ascending."""
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    with entries:
        return tuple(
            sorted(
                int(entry.name)
                for entry in entries
                if _VERSION_DIR.match(entry.name)
                and os.path.isfile(os.path.join(entry.path, CARD_FILE))
            )
        )


def _scan_names(root: Path) -> tuple[str, ...]:
    """The folders of a store's root whose names are model names, sorted."""
    try:
        return tuple(sorted(p.name for p in root.iterdir() if _NAME.match(p.name)))
    except (FileNotFoundError, NotADirectoryError):
        return ()


def _read_aliases(folder: Path, name: str) -> dict[str, int]:
    path = folder / ALIASES_FILE
    if not path.is_file():
        return {}
    try:
        return _ALIASES.validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise StoreError(
            f"{name}/{ALIASES_FILE} must be a JSON object of alias -> version number"
        ) from exc


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (it becomes a folder name), else raise."""
    if not _NAME.match(name):
        raise InvalidModelRefError(
            f"model name {name!r} is invalid: names are 1-64 characters of lowercase letters, "
            "digits, '-' and '_', starting with a letter or digit"
        )
    return name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@runtime_checkable
class Store(Protocol):
    """A place that holds model versions; the registry reads and writes through this only."""

    @property
    def uri(self) -> str:
        """Where the store is, as a URI (``file:///...``, ``s3://...``)."""
        ...

    def names(self) -> list[str]:
        """Model names with at least one version, sorted."""
        ...

    def versions(self, name: str) -> list[int]:
        """Version numbers of ``name``, ascending; empty if there are none."""
        ...

    def read_card(self, name: str, version: int) -> ModelCard:
        """The card of one version."""
        ...

    def onnx_path(self, name: str, version: int, file: str = ONNX_FILE) -> Path:
        """A local path to one of a version's files (a cached copy for remote stores)."""
        ...

    def put_version(self, card: ModelCard, files: Mapping[str, Path]) -> None:
        """Write a new version atomically: ``files`` maps file names to source paths.

        Raises:
            DuplicateVersionError: the version exists (versions are never overwritten).
        """
        ...

    def read_aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of ``name``; empty if none were set."""
        ...

    def write_aliases(self, name: str, aliases: Mapping[str, int]) -> None:
        """Replace the aliases of ``name`` atomically."""
        ...


class DirectoryStore:
    """A :class:`Store` in a local directory (see the module docstring for the layout).

    A root that does not exist yet reads as an empty store and is created by the first write.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    @property
    def uri(self) -> str:
        return self.root.absolute().as_uri()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        folders = _FOLDERS.get(self.root, "names", lambda: _scan_names(self.root))
        return [name for name in folders if self.versions(name)]

    def versions(self, name: str) -> list[int]:
        if not _NAME.match(name):
            return []
        folder = self.root / name
        return list(_FOLDERS.get(folder, "versions", lambda: _scan_versions(folder)))

    def read_card(self, name: str, version: int) -> ModelCard:
        path = self._version_dir(name, version) / CARD_FILE
        card = _CARDS.get(path, lambda found: read_card(ModelCard, found))
        if card is None:
            raise StoreError(f"{name}@{version} has no {CARD_FILE} in the store at {self.uri}")
        if (card.name, card.version) != (name, version):
            raise InvalidCardError(
                f"the card in folder {name}/{version} describes {card.ref}; "
                "a card must sit in the folder of its own name and version"
            )
        return card

    def onnx_path(self, name: str, version: int, file: str = ONNX_FILE) -> Path:
        path = self._version_dir(name, version) / _version_file(file)
        if not path.is_file():
            raise StoreError(f"{name}@{version} has no file {file} in the store at {self.uri}")
        return path

    def put_version(self, card: ModelCard, files: Mapping[str, Path]) -> None:
        if ONNX_FILE not in files:
            raise StoreError(f"a version needs its {ONNX_FILE}; got {sorted(files)}")
        final = self._version_dir(card.name, card.version)
        if final.exists():
            raise DuplicateVersionError(card.name, card.version)
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{card.name}-{card.version}-", dir=staging))
        try:
            self._fill(tmp, card, files)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)  # atomic; fails if another writer got there first
            except OSError as exc:
                if final.exists():
                    raise DuplicateVersionError(card.name, card.version) from exc
                raise StoreError(f"cannot move {card.ref} into place: {exc.strerror}") from exc
            _fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def read_aliases(self, name: str) -> dict[str, int]:
        if not _NAME.match(name):
            return {}
        folder = self.root / name
        read = lambda: _read_aliases(folder, name)  # noqa: E731
        return dict(_FOLDERS.get(folder, "aliases", read, folder / ALIASES_FILE))

    def write_aliases(self, name: str, aliases: Mapping[str, int]) -> None:
        folder = self.root / name
        if not self.versions(name):
            raise StoreError(f"cannot set aliases of {name!r}: it has no versions in {self.uri}")
        text = json.dumps(dict(sorted(aliases.items())), indent=2) + "\n"
        _write_atomic(folder / ALIASES_FILE, text)

    def _version_dir(self, name: str, version: int) -> Path:
        if not _NAME.match(name) or version < 1:
            raise StoreError(f"{name!r}@{version} is not a valid model name and version")
        return self.root / name / str(version)

    @staticmethod
    def _fill(folder: Path, card: ModelCard, files: Mapping[str, Path]) -> None:
        for file, source in files.items():
            target = folder / _version_file(file)
            try:
                _copy_file(Path(source), target)
            except OSError as exc:
                raise StoreError(f"cannot copy {file} of {card.ref}: {exc.strerror}") from exc
        with open(folder / CARD_FILE, "x", encoding="utf-8") as handle:
            handle.write(card.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        for path in folder.iterdir():
            path.chmod(0o444)  # versions are immutable; a read-only file says so
        folder.chmod(0o755)  # mkdtemp made it private; readers may run as another user


def _version_file(file: str) -> str:
    if file not in VERSION_FILES:
        raise StoreError(f"unknown version file {file!r}; valid files: {sorted(VERSION_FILES)}")
    return file


def _copy_file(source: Path, target: Path) -> None:
    """Copy and fsync; ``target`` must not exist."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


StoreFactory = Callable[[str], Store]
_F = TypeVar("_F", bound=StoreFactory)
_SCHEMES: dict[str, StoreFactory] = {}


def register_store_scheme(scheme: str) -> Callable[[_F], _F]:
    """Decorator: :func:`open_store` hands ``scheme://...`` URIs to the decorated factory."""

    def decorate(factory: _F) -> _F:
        _SCHEMES[scheme.lower()] = factory
        return factory

    return decorate


def known_schemes() -> list[str]:
    """Schemes :func:`open_store` accepts besides plain paths."""
    return sorted(_SCHEMES)


@register_store_scheme("file")
def _file_store(uri: str) -> Store:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise StoreError("file:// store URIs must name a local path (file:///abs/path)")
    return DirectoryStore(Path(url2pathname(parts.path)))


def open_store(location: Store | Path | str) -> Store:
    """A store for a path, a ``scheme://`` URI, or a store (returned as is).

    Raises:
        UnknownStoreSchemeError: no factory is registered for the URI's scheme.
    """
    if isinstance(location, Path):
        return DirectoryStore(location)
    if not isinstance(location, str):
        return location
    scheme, sep, _ = location.partition("://")
    if not sep:
        return DirectoryStore(Path(location))
    factory = _SCHEMES.get(scheme.lower())
    if factory is None:
        raise UnknownStoreSchemeError(scheme, _SCHEMES)
    return factory(location)


def default_store_locations(
    primary: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> list[Path | str]:
    """The shipped store (or ``primary``) first, then ``$BREASTDX_EXTRA_MODEL_STORES``.

    Args:
        primary: the service's ``BREASTDX_MODEL_STORE``; None means :data:`SHIPPED_STORE`.
        environ: where to read the extra stores (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    extras: Sequence[str] = [s.strip() for s in env.get(EXTRA_STORES_ENV, "").split(",")]
    return [primary if primary is not None else SHIPPED_STORE, *(s for s in extras if s)]
