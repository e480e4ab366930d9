"""Install-time compatibility hook: CUDA torchvision wheel next to a CPU torch.

The torchvision wheel on the package index is a CUDA build; next to the CPU torch wheel its
import fails with "operator torchvision::nms does not exist" because its C++ ops library cannot
load. Declaring the op schemas before torchvision's own registrations makes its pure-Python model
definitions importable (its C++ ops and io stay unavailable, and breastdx does not use them).

scripts/setup-env.sh copies this file into a virtual environment's site-packages, with a .pth
line that imports it, only where ``import torchvision`` fails. It installs a meta-path finder
that acts once, when torchvision is first imported, so nothing else pays for it: in particular
the torch-free service never imports torch because of this hook.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES: list[object] = []  # keep the fragment alive for the life of the process


class _TorchvisionOpsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            with contextlib.suppress(RuntimeError):  # already defined by a working build
                lib.define(schema)
        _LIBRARIES.append(lib)
        return None  # let the regular finders load torchvision itself


if not any(isinstance(f, _TorchvisionOpsFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionOpsFinder())
