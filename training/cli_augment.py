"""``breastdx augment-preview``: one image through every augmentation policy, as a PNG grid.

Rows: ``vanilla``, ``geometric``, ``filter``, ``all``, then MixUp and CutMix of the image with its
horizontally flipped copy; columns: ``--n`` draws (epochs ``0 .. n - 1`` of run seed ``--seed``).
Mask outlines are drawn in red (MixUp outlines both masks, CutMix each where it shows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from imaging.decode import decode
from imaging.errors import ImagingError
from imaging.preprocess import to_uint8
from training.augment import Augmenter
from training.mix import MIXERS

POLICY_ROWS = ("vanilla", "geometric", "filter", "all")
MIX_ROWS = ("mixup", "cutmix")
LABEL_WIDTH = 96  # px of the row-label column
OUTLINE = (255, 0, 0)  # RGB


class PreviewError(Exception):
    """An input of the preview cannot be used (the message says why)."""


def grid_shape(n: int, tile: int) -> tuple[int, int]:
    """``(height, width)`` of the PNG for ``n`` columns of ``tile`` x ``tile`` pixels."""
    return (len(POLICY_ROWS) + len(MIX_ROWS)) * tile, LABEL_WIDTH + n * tile


def _display(path: Path, role: str) -> np.ndarray:
    """Decode with ``imaging.decode``: the first frame's display image, float in [0, 1]."""
    try:
        return decode(path).display(0)  # (H, W) or (H, W, 3)
    except ImagingError as exc:  # messages never repeat the path (it may name a patient)
        raise PreviewError(f"{role}: {exc.message}") from exc


def read_image(path: Path) -> np.ndarray:
    """The display image of ``path`` (DICOM, PNG, JPEG, PGM, TIFF) as uint8 ``(H, W[, 3])``."""
    return to_uint8(_display(path, "image"))


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as uint8 {0, 1} on an image of ``shape`` (nearest-neighbour if resized)."""
    values = _display(path, "mask")
    values = values.max(axis=2) if values.ndim == 3 else values  # (H, W)
    mask = (values > 0.5).astype(np.uint8)
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


def _square(image: np.ndarray, mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (RGB uint8) and mask resized to ``tile`` x ``tile`` (stretched, like training)."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    rgb = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA)
    return rgb, cv2.resize(mask, (tile, tile), interpolation=cv2.INTER_NEAREST)


def outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of RGB ``image`` with the contours of ``mask`` drawn on it."""
    out = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, OUTLINE, 1)
    return out


def _policy_row(
    image: np.ndarray, mask: np.ndarray, policy: str, n: int, seed: int
) -> list[np.ndarray]:
    augmenter = Augmenter(policy, seed=seed)
    tiles = []
    for k in range(n):
        aug, aug_mask = augmenter(image, mask, key="preview", epoch=k)
        tiles.append(outline(aug, aug_mask if aug_mask is not None else mask))
    return tiles


def _mix_row(image: np.ndarray, mask: np.ndarray, name: str, n: int, seed: int) -> list[np.ndarray]:
    """MixUp / CutMix of the image with its flipped copy; masks follow the same rule."""
    pair = np.stack([image, image[:, ::-1]]).astype(np.float32)  # (2, H, W, 3)
    masks = np.stack([mask, mask[:, ::-1]]).astype(np.float32)[..., None]  # (2, H, W, 1)
    stacked = torch.from_numpy(np.concatenate([pair, masks], axis=3)).permute(0, 3, 1, 2)
    tiles = []
    rng = np.random.default_rng(seed)
    for _ in range(n):
        while True:  # a draw that actually mixes the two (not the identity permutation)
            result = MIXERS.get(name)(stacked, torch.tensor([0, 1]), 2, 1.0, rng)
            if 0.05 < result.lam < 0.95 and result.targets[0, 0] != 1.0:
                break
        mixed = result.inputs[0].permute(1, 2, 0).numpy()  # (H, W, 4)
        rgb = np.clip(mixed[..., :3], 0, 255).astype(np.uint8)
        shown = mixed[..., 3] > 0.5 if name == "cutmix" else masks[:, :, :, 0].max(axis=0) > 0
        tiles.append(outline(rgb, shown.astype(np.uint8)))
    return tiles


def _label(text: str, tile: int) -> np.ndarray:
    panel = np.full((tile, LABEL_WIDTH, 3), 255, np.uint8)
    cv2.putText(panel, text, (4, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return panel


def build_grid(
    image: np.ndarray, mask: np.ndarray | None, n: int, seed: int, tile: int
) -> np.ndarray:
    """The preview grid as RGB uint8 ``grid_shape(n, tile) + (3,)``."""
    base_mask = mask if mask is not None else np.zeros(image.shape[:2], np.uint8)
    rgb, small_mask = _square(image, base_mask, tile)
    rows = []
    for policy in POLICY_ROWS:
        rows.append(
            np.hstack([_label(policy, tile), *_policy_row(rgb, small_mask, policy, n, seed)])
        )
    for name in MIX_ROWS:
        rows.append(np.hstack([_label(name, tile), *_mix_row(rgb, small_mask, name, n, seed)]))
    return np.vstack(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastdx augment-preview",
        description="Write a PNG grid of one image under every augmentation policy.",
    )
    parser.add_argument("image", type=Path, help="image file (PNG, JPEG, TIFF, DICOM)")
    parser.add_argument("--mask", type=Path, help="binary mask file to outline")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--n", type=int, default=4, help="columns (draws per policy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=160, help="tile size in pixels")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the preview grid; a bad input prints a message on stderr and returns 1."""
    args = _parser().parse_args(argv)
    if args.n < 1 or args.tile < 16:
        print("augment-preview: --n must be >= 1 and --tile >= 16", file=sys.stderr)
        return 2
    try:
        image = read_image(args.image)
        mask = read_mask(args.mask, image.shape[:2]) if args.mask is not None else None
        grid = build_grid(image, mask, args.n, args.seed, args.tile)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise PreviewError(f"could not write {args.out}")
    except (PreviewError, OSError) as exc:
        print(f"augment-preview: {exc}", file=sys.stderr)
        return 1
    print(str(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
