"""Can a classifier of mass crops tell malignant from benign better than the U-Net's map?

    python tools/mass_crop_classifier_check.py [--epochs 20] [--context 1.6] [--amp]

An exploration for issue 12's image malignancy AUC, not a shipped path: every CBIS-DDSM mass box
of the committed mammography split's training part is cut from its film (a square of
``--context`` x the box's longer side, at least 48 px, on the 800 x 800 grid the release stores),
resized to 112 px, and a ResNet18 with the small stem (1 grey channel, 2 classes) learns the
film's pathology from random 96 px windows of it (rotations by 90 degrees, flips, gain and offset
jitter; AdamW 1e-3, one-cycle, batch 32). After each epoch it prints the validation part's AUC
per crop and per film (the film's highest crop probability, the centre window and its mirror
image averaged). The boxes are the TRUE ones: an upper bound for a second stage that would see the
detector's marks instead. The test part is never read. Measured on 2026-12-06
(docs/results/mammography-model.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data.splits import Split  # noqa: E402
from training.models import build_model  # noqa: E402
from training.torch_dataset import read_samples  # noqa: E402

SPLIT = ROOT / "models_registry/store/splits/mammography-cbis-mias.json"
CROP, SIZE = 112, 96


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(wins / (len(pos) * len(neg)))


def crops(data: Path, context: float) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split part: ``(N, CROP, CROP)`` uint8 crops, their film's label and film id."""
    split = Split.load(SPLIT)
    parts = {name: {i.split(":", 1)[-1] for i in split.ids(name)} for name in ("train", "val")}
    out: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in parts}
    for sample in read_samples("cbis_ddsm_coco", data):
        part = next((k for k, ids in parts.items() if sample.id in ids), None)
        if part is None:
            continue
        image = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE)
        grid_h, grid_w = sample.extra["box_grid"]
        sy, sx = image.shape[0] / grid_h, image.shape[1] / grid_w
        for x, y, w, h in sample.extra["boxes"]:
            side = round(max(48.0, context * max(w * sx, h * sy)))
            cx, cy = (x + w / 2) * sx, (y + h / 2) * sy
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_CONSTANT, value=0)
            cut = padded[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side]
            out[part][0].append(cv2.resize(cut, (CROP, CROP), interpolation=cv2.INTER_AREA))
            out[part][1].append(int(sample.label))
            out[part][2].append(sample.id)
    return {k: (np.asarray(a), np.asarray(b), np.asarray(c)) for k, (a, b, c) in out.items()}


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((len(batch), SIZE, SIZE), np.float32)
    for i, image in enumerate(batch):
        top, left = rng.integers(0, CROP - SIZE + 1, 2)
        view = np.rot90(image[top : top + SIZE, left : left + SIZE], rng.integers(4))
        view = view[:, ::-1] if rng.random() < 0.5 else view
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05)
        out[i] = np.clip((view - 0.5) * gain + 0.5 + offset, 0, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cbis-ddsm-mass")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--context", type=float, default=1.6)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (faster with AMX)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    parts = crops(args.data, args.context)
    x_train, y_train, _ = parts["train"]
    x_val, y_val, film_val = parts["val"]
    x_train, x_val = x_train.astype(np.float32) / 255, x_val.astype(np.float32) / 255
    print(f"train {len(y_train)} masses ({y_train.mean():.2f} malignant), val {len(y_val)}")
    model = build_model("resnet18", in_channels=1, num_classes=2, input_size=SIZE, stem="small")
    model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(y_train) / 32))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, 1e-3, total_steps=steps, pct_start=0.1
    )
    margin = (CROP - SIZE) // 2
    centre = np.ascontiguousarray(x_val[:, margin : margin + SIZE, margin : margin + SIZE])
    for epoch in range(1, args.epochs + 1):
        start, model = time.time(), model.train()
        order = rng.permutation(len(y_train))
        for k in range(0, len(y_train), 32):
            idx = order[k : k + 32]
            images = torch.from_numpy(augment(x_train[idx], rng))[:, None]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                logits = model(images.contiguous(memory_format=torch.channels_last))["class_logits"]
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(y_train[idx]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        probs = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            for k in range(0, len(y_val), 64):
                views = [centre[k : k + 64], np.ascontiguousarray(centre[k : k + 64, :, ::-1])]
                runs = [
                    torch.softmax(model(torch.from_numpy(v)[:, None])["class_logits"].float(), 1)
                    for v in views
                ]
                probs.append(np.mean([r[:, 1].numpy() for r in runs], axis=0))
        p = np.concatenate(probs)
        films = sorted(set(film_val))
        film_p = np.array([p[film_val == f].max() for f in films])
        film_y = np.array([y_val[film_val == f][0] for f in films])
        print(
            f"epoch {epoch}: val AUC per crop {auc(p, y_val):.3f}, per film "
            f"{auc(film_p, film_y):.3f} ({len(films)} films); "
            f"{len(y_train) / (time.time() - start):.0f} crops/s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
