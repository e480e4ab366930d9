"""The seed paper's reported figures (docs/paper.md, Tables 4-8), as data for the grid reports.

Segmentation cells are ``(mean IoU over foreground and background, Dice)``; the paper's IoU is
the foreground/background mean (hence IoU > Dice in several rows). Table 8 is accuracy.
"""

from __future__ import annotations

SegCell = tuple[float, float]  # (mIoU fg/bg, Dice)

SEG_MODELS = ("unet", "resunetpp", "deeplabv3")
SEG_LOSSES = ("bce", "dice", "tversky")
SEG_POLICIES = ("vanilla", "filter", "geometric", "all")
CLS_MODELS = ("vgg19", "densenet121", "resnet50", "efficientnet_v2_s")
CLS_POLICIES = ("vanilla", "mixup", "cutmix", "filter", "geometric")

# Table 4 (mammography) and Table 6 (ultrasound): original data, loss comparison.
LOSS_TABLES: dict[str, dict[tuple[str, str], SegCell]] = {
    "mammography": {
        ("unet", "bce"): (0.56, 0.39),
        ("unet", "dice"): (0.62, 0.41),
        ("unet", "tversky"): (0.63, 0.43),
        ("resunetpp", "bce"): (0.54, 0.41),
        ("resunetpp", "dice"): (0.63, 0.42),
        ("resunetpp", "tversky"): (0.63, 0.44),
        ("deeplabv3", "bce"): (0.52, 0.36),
        ("deeplabv3", "dice"): (0.62, 0.39),
        ("deeplabv3", "tversky"): (0.63, 0.42),
    },
    "ultrasound": {
        ("unet", "bce"): (0.75, 0.71),
        ("unet", "dice"): (0.76, 0.72),
        ("unet", "tversky"): (0.79, 0.76),
        ("resunetpp", "bce"): (0.67, 0.61),
        ("resunetpp", "dice"): (0.78, 0.74),
        ("resunetpp", "tversky"): (0.75, 0.70),
        ("deeplabv3", "bce"): (0.75, 0.73),
        ("deeplabv3", "dice"): (0.79, 0.77),
        ("deeplabv3", "tversky"): (0.79, 0.76),
    },
}

# Table 5 (mammography) and Table 7 (ultrasound): by augmentation, Dice and Tversky losses.
_AUG_COLUMNS = [(m, loss) for m in SEG_MODELS for loss in ("dice", "tversky")]


def _rows(rows: dict[str, list[SegCell]]) -> dict[tuple[str, str, str], SegCell]:
    return {
        (policy, model, loss): cell
        for policy, cells in rows.items()
        for (model, loss), cell in zip(_AUG_COLUMNS, cells, strict=True)
    }


AUGMENTATION_TABLES: dict[str, dict[tuple[str, str, str], SegCell]] = {
    "mammography": _rows(
        {
            "vanilla": [
                (0.624, 0.411),
                (0.634, 0.438),
                (0.631, 0.421),
                (0.639, 0.441),
                (0.619, 0.392),
                (0.631, 0.417),
            ],
            "filter": [
                (0.819, 0.786),
                (0.832, 0.808),
                (0.777, 0.712),
                (0.745, 0.658),
                (0.786, 0.729),
                (0.809, 0.765),
            ],
            "geometric": [
                (0.714, 0.608),
                (0.711, 0.604),
                (0.701, 0.506),
                (0.685, 0.548),
                (0.691, 0.557),
                (0.691, 0.557),
            ],
            "all": [
                (0.771, 0.704),
                (0.774, 0.708),
                (0.736, 0.612),
                (0.724, 0.617),
                (0.737, 0.639),
                (0.754, 0.672),
            ],
        }
    ),
    "ultrasound": _rows(
        {
            "vanilla": [
                (0.758, 0.716),
                (0.789, 0.764),
                (0.778, 0.742),
                (0.752, 0.704),
                (0.793, 0.764),
                (0.792, 0.764),
            ],
            "filter": [
                (0.984, 0.988),
                (0.980, 0.986),
                (0.962, 0.965),
                (0.962, 0.964),
                (0.980, 0.983),
                (0.978, 0.982),
            ],
            "geometric": [
                (0.816, 0.799),
                (0.836, 0.800),
                (0.833, 0.808),
                (0.812, 0.789),
                (0.820, 0.799),
                (0.812, 0.789),
            ],
            "all": [
                (0.906, 0.905),
                (0.902, 0.902),
                (0.877, 0.870),
                (0.875, 0.872),
                (0.890, 0.885),
                (0.893, 0.887),
            ],
        }
    ),
}

# Table 8: histopathology classification accuracy by policy and model.
_T8 = {
    "vanilla": (0.79, 0.83, 0.84, 0.83),
    "mixup": (0.84, 0.85, 0.91, 0.83),
    "cutmix": (0.87, 0.90, 0.94, 0.94),
    "filter": (0.92, 0.94, 0.97, 0.94),
    "geometric": (0.82, 0.88, 0.90, 0.85),
}
CLASSIFICATION_TABLE: dict[tuple[str, str], float] = {
    (policy, model): acc
    for policy, accs in _T8.items()
    for model, acc in zip(CLS_MODELS, accs, strict=True)
}
