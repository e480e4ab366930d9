"""A trainable state dict rebuilt from a shipped ONNX file (a warm start without the checkpoint).

The exporter folds each batch normalisation into the convolution before it, and the store may
keep weights in fp16 (``Cast`` nodes to float32). ``state_from_onnx`` walks the graph's
convolutions in execution order, matches them to the network's own convolutions (same order,
same shapes), and un-folds each normalisation so that the network in eval mode computes what the
ONNX file computes: for a convolution ``z = W * x`` followed by the folded bias ``b``, the batch
norm gets ``running_mean = m``, ``running_var = v`` (the per-channel statistics of ``z`` over a
calibration batch, run in eval mode), ``weight = sqrt(v + eps)`` and ``bias = m + b``, so that
``BN(z) = z + b`` exactly in eval mode and approximately in training mode, where the batch's own
statistics stand in for ``m`` and ``v``. Tensors the exporter kept by name (heads, up-convolutions)
are loaded by name. ``check`` compares the rebuilt network with the ONNX file on the calibration
batch (ONNX Runtime) and refuses a mismatch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from training.parity import ExportError

if TYPE_CHECKING:
    from training.config import TrainConfig

EXPORT_PREFIX = "model."  # OnnxExportWrapper holds the network as ``.model``
CHECK_WHOLE = 4  # whole images the rebuilt network is checked on where it trains on crops


@dataclass(frozen=True)
class OnnxWeights:
    """A network's recovered state and how well it reproduces the ONNX file."""

    state: dict[str, torch.Tensor]
    by_name: int  # tensors loaded under their own names
    unfolded: int  # convolution + batch norm pairs rebuilt
    max_abs_diff: float  # largest output difference against ONNX Runtime on the batch


def _initializers(graph: object) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}  # type: ignore[attr-defined]
    # fp16-stored weights reach their consumer through a Cast (or Identity) node: follow it
    for node in graph.node:  # type: ignore[attr-defined]
        if node.op_type in ("Cast", "Identity") and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(np.float32)
    return values


def _conv_calls(
    model: nn.Module, batch: torch.Tensor
) -> tuple[list[nn.Conv2d], dict[nn.Conv2d, nn.BatchNorm2d]]:
    """The model's plain convolutions in the order a forward pass calls them, and the batch
    norm called right after each one that has one (a U-Net's ``Sequential`` blocks, a ResNet's
    ``conv1``/``bn1`` attributes alike; the parity check catches a pairing that is wrong)."""
    calls: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: calls.append(mod))
        for m in model.modules()
        if type(m) is nn.Conv2d or isinstance(m, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            model(batch[:1])
    finally:
        for h in hooks:
            h.remove()
    pairs: dict[nn.Conv2d, nn.BatchNorm2d] = {}
    for first, second in itertools.pairwise(calls):
        if (
            type(first) is nn.Conv2d
            and isinstance(second, nn.BatchNorm2d)
            and second.num_features == first.out_channels
        ):
            pairs[first] = second
    return [c for c in calls if type(c) is nn.Conv2d], pairs


def state_from_onnx(
    model: nn.Module,
    onnx_path: Path,
    batch: torch.Tensor,
    *,
    check: float | None = 1e-3,
    check_batch: torch.Tensor | None = None,
) -> OnnxWeights:
    """Load ``onnx_path``'s weights into ``model`` and return its state (see the module doc).

    ``batch``: ``(N, C, H, W)`` float32 images preprocessed as the card says (calibration, and
    the parity check when ``check`` is a tolerance). ``check_batch``: other images for the check,
    where the file's input size is not the calibration batch's (a network trained on crops is
    calibrated on crops and exported at the whole image's size). Raises ``ExportError`` where
    the graph does not fit the network or the rebuilt network does not reproduce the file.
    """
    import onnx

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:  # protobuf's DecodeError, OSError, ...
        raise ExportError(f"{onnx_path.name} is not a readable ONNX file ({exc})") from exc
    values = _initializers(graph)
    own = model.state_dict()
    named = {
        k.removeprefix(EXPORT_PREFIX): v
        for k, v in values.items()
        if k.removeprefix(EXPORT_PREFIX) in own
    }
    with torch.no_grad():
        for key, value in named.items():
            if tuple(own[key].shape) != value.shape:
                raise ExportError(
                    f"{onnx_path.name}: {key} has shape {value.shape}, the network "
                    f"{tuple(own[key].shape)}"
                )
            own[key].copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
    model.eval()
    convs, norms = _conv_calls(model, batch)
    folded = [c for c in convs if c in norms]
    graph_convs = [
        n
        for n in graph.node
        if n.op_type == "Conv" and n.input[1].removeprefix(EXPORT_PREFIX) not in named
    ]
    if len(graph_convs) != len(folded):
        raise ExportError(
            f"{onnx_path.name} has {len(graph_convs)} folded convolutions, the network "
            f"{len(folded)}: not this architecture"
        )
    biases: dict[nn.Conv2d, torch.Tensor] = {}
    with torch.no_grad():
        for node, conv in zip(graph_convs, folded, strict=True):
            weight = values[node.input[1]]
            if tuple(conv.weight.shape) != weight.shape:
                raise ExportError(
                    f"{onnx_path.name}: convolution {node.name or node.output[0]} has shape "
                    f"{weight.shape}, the network's {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
            bias = values[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0])
            biases[conv] = torch.from_numpy(np.array(bias, dtype=np.float32))
            norm = norms[conv]  # identity + bias first: exact in eval mode whatever the data
            norm.weight.fill_(1.0)
            norm.bias.copy_(biases[conv])
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
    _calibrate(model, batch, norms, biases)
    probe = batch if check_batch is None else check_batch
    diff = _max_diff(model, onnx_path, probe) if check is not None else float("nan")
    if check is not None and not diff <= check:
        raise ExportError(
            f"the network rebuilt from {onnx_path.name} differs from it by {diff:.2e} "
            f"(tolerance {check:.0e})"
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return OnnxWeights(state, len(named), len(folded), diff)


def _calibrate(
    model: nn.Module,
    batch: torch.Tensor,
    norms: Mapping[nn.Conv2d, nn.BatchNorm2d],
    biases: Mapping[nn.Conv2d, torch.Tensor],
) -> None:
    """Give each rebuilt batch norm the statistics of its convolution's output on ``batch``."""
    stats: dict[nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(conv: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        flat = out.detach().transpose(0, 1).reshape(out.shape[1], -1)  # (C, N*H*W)
        stats[conv] = (flat.mean(dim=1), flat.var(dim=1, unbiased=False))  # type: ignore[index]

    hooks = [conv.register_forward_hook(record) for conv in biases]
    try:
        with torch.no_grad():
            model.eval()
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for conv, norm in norms.items():
            if conv not in stats:
                continue
            mean, var = stats[conv]
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean + biases[conv])


def _max_diff(model: nn.Module, onnx_path: Path, batch: torch.Tensor) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    try:
        expected = session.run(names, {session.get_inputs()[0].name: batch.numpy()})
    except Exception as exc:  # onnxruntime's InvalidArgument, Fail, ...: not ours to crash on
        raise ExportError(
            f"{onnx_path.name} does not take the config's images {tuple(batch.shape)} "
            f"(another input size?): {str(exc).splitlines()[0]}"
        ) from exc
    with torch.no_grad():
        got = model(batch)
    diffs = [
        float(np.max(np.abs(got[name].float().numpy().reshape(e.shape) - e)))
        for name, e in zip(names, expected, strict=True)
        if name in got
    ]
    if not diffs:
        raise ExportError(f"{onnx_path.name}'s outputs {names} are not the network's")
    return max(diffs)


def rebuild_from_onnx(
    config: TrainConfig,
    onnx_path: Path,
    *,
    n: int = 48,
    seed: int = 0,
    tolerance: float = 1e-3,
) -> tuple[nn.Module, OnnxWeights, int]:
    """``config``'s network with ``onnx_path``'s weights: ``(model, weights, calibration images)``.

    ``n`` training images of ``config``'s split, preprocessed and augmented as in training,
    calibrate the batch norms; the rebuilt network is checked against the file on them (where
    the config trains on crops: calibrated on crops, checked on ``CHECK_WHOLE`` of the same
    images whole, at the size the file was exported at). Raises ``ExportError`` (a file that
    does not fit the network) or the data's own ``BreastdxError``.
    """
    import tempfile

    from training.crops import CropDataset
    from training.torch_dataset import build_splits
    from training.trainer import build_model

    with tempfile.TemporaryDirectory() as scratch:  # build_splits writes split.json there
        config = config.model_copy(update={"output_dir": Path(scratch)})
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"pretrained": None})}
        )
        train = build_splits(config).train
        count = min(n, len(train))  # type: ignore[arg-type]
        picks = np.random.default_rng(seed).choice(len(train), count, replace=False)  # type: ignore[arg-type]
        batch = torch.stack([torch.as_tensor(train[int(i)]["image"]) for i in picks]).float()
        check_batch = None
        if isinstance(train, CropDataset):  # calibrate on crops; check whole films, as exported
            whole = train.base  # the films the crops are cut from
            rows = np.random.default_rng(seed).choice(
                len(whole),  # type: ignore[arg-type]
                min(CHECK_WHOLE, len(whole)),  # type: ignore[arg-type]
                replace=False,
            )
            check_batch = torch.stack(
                [torch.as_tensor(whole[int(i)]["image"]) for i in rows]
            ).float()
    model = build_model(config)
    weights = state_from_onnx(model, onnx_path, batch, check=tolerance, check_batch=check_batch)
    return model, weights, count
