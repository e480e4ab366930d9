"""The model registry: ONNX files with their cards, in numbered immutable versions.

Torch-free: the service loads models through :class:`Registry` and feeds them as their
:class:`ModelCard` says. ``breastdx models`` is the command line (``models_registry.cli``).
"""

from models_registry.card import CardDraft, ModelCard, Stage, Task
from models_registry.errors import (
    DuplicateVersionError,
    ModelIntegrityError,
    RegistryError,
    UnknownAliasError,
    UnknownModelError,
    UnknownVersionError,
)
from models_registry.registry import LoadedModel, ModelVersion, Registry, VerifyReport
from models_registry.store import (
    SHIPPED_STORE,
    DirectoryStore,
    Store,
    open_store,
    register_store_scheme,
)

__all__ = [
    "SHIPPED_STORE",
    "CardDraft",
    "DirectoryStore",
    "DuplicateVersionError",
    "LoadedModel",
    "ModelCard",
    "ModelIntegrityError",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "Stage",
    "Store",
    "Task",
    "UnknownAliasError",
    "UnknownModelError",
    "UnknownVersionError",
    "VerifyReport",
    "open_store",
    "register_store_scheme",
]
