"""Drawing primitives of the synthetic data sets: lesion outlines, textures, tissue patches.

The learnable signal is the one radiologists use (BI-RADS lexicon): benign masses are oval with
smooth, circumscribed margins; malignant ones are irregular and spiculated. In ultrasound,
benign lesions show posterior enhancement and malignant ones posterior shadowing. In H&E, IDC
patches are crowded with large dark nuclei while stroma is pink with few small nuclei.
"""

from __future__ import annotations

import cv2
import numpy as np


def lesion_polygon(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, malignant: bool
) -> np.ndarray:
    """Outline ``(N, 2)`` int32 (x, y): a smooth oval (benign) or a spiculated star (malignant)."""
    angles = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    if malignant:
        spikes = rng.integers(7, 12)
        wobble = 0.45 * np.maximum(0.0, np.cos(spikes * angles + rng.uniform(0, np.pi))) ** 3
        radii = radius * (0.7 + wobble + rng.uniform(-0.08, 0.08, angles.size))
        aspect = 1.0
    else:
        radii = radius * (1.0 + 0.04 * np.sin(2 * angles + rng.uniform(0, np.pi)))
        aspect = rng.uniform(0.55, 0.8)  # wider than tall: "parallel to the skin"
    xs = centre[0] + radii * np.cos(angles)
    ys = centre[1] + aspect * radii * np.sin(angles)
    return np.stack([xs, ys], axis=1).round().astype(np.int32)


def fill_mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """uint8 mask ``(H, W)`` with 255 inside ``polygon``."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [polygon], 255)
    return mask


def ultrasound_background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """float32 ``(H, W)`` in [0, 1]: tissue blobs and tilted layers under speckle, darker with
    depth. The coarse structure is random per image, so unrelated frames do not look alike."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), h / 10)
    blobs = (blobs - blobs.mean()) / (blobs.std() + 1e-6)
    layers = np.zeros((h, w), np.float32)
    for _ in range(3):
        angle, period = rng.uniform(-0.35, 0.35), rng.uniform(12, 40)
        phase = (yy * np.cos(angle) + xx * np.sin(angle)) * (2 * np.pi / period)
        layers += np.sin(phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    tissue = 0.45 + 0.12 * blobs + 0.05 * layers
    depth = np.linspace(1.0, 0.6, h, dtype=np.float32)[:, None]
    noise = rng.rayleigh(0.25, size=(h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.5, sigmaY=0.7)
    return np.clip(depth * tissue * (0.6 + speckle), 0, 1).astype(np.float32)


def ultrasound_lesion(image: np.ndarray, mask: np.ndarray, malignant: bool) -> np.ndarray:
    """Darken the lesion (hypoechoic) and add posterior shadowing or enhancement below it."""
    out = image.copy()
    inside = mask > 0
    out[inside] *= 0.25 if malignant else 0.15
    ys, xs = np.nonzero(inside)
    if ys.size:
        bottom, left, right = ys.max(), xs.min(), xs.max() + 1
        below = out[bottom + 1 :, left:right]
        below *= 0.55 if malignant else 1.35
    return np.clip(out, 0, 1)


def mammogram_background(
    rng: np.random.Generator, shape: tuple[int, int], breast_on_left: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 in [0, 1], breast mask bool)``: a half-ellipse breast on black film."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x0 = 0.0 if breast_on_left else w - 1.0
    inside = ((xx - x0) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2 <= 1.0
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3.0)
    tissue = 0.35 + 0.08 * texture + 0.1 * rng.random()
    image = np.where(inside, tissue, 0.02).astype(np.float32)
    return np.clip(image, 0, 1), inside


def add_mass(image: np.ndarray, mask: np.ndarray) -> None:
    """Brighten a mass region (denser than the surrounding tissue), in place."""
    soft = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 1.2)
    image += 0.4 * soft
    np.clip(image, 0, 1, out=image)


def add_calcifications(
    rng: np.random.Generator,
    image: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    malignant: bool,
) -> np.ndarray:
    """Scatter bright specks around ``centre``; return the cluster's ROI mask (uint8 0/255)."""
    count = int(rng.integers(14, 22) if malignant else rng.integers(4, 8))
    roi = np.zeros(image.shape, np.uint8)
    for _ in range(count):
        angle, dist = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.random())
        x, y = centre[0] + dist * np.cos(angle), centre[1] + dist * np.sin(angle)
        size = int(rng.integers(1, 3)) if malignant else int(rng.integers(2, 4))
        cv2.circle(image, (round(x), round(y)), size, 1.0, -1)
    cv2.circle(roi, (round(centre[0]), round(centre[1])), round(radius * 1.15), 255, -1)
    return roi


def he_patch(rng: np.random.Generator, shape: tuple[int, int], tumour: bool) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` H&E-like patch: pink stroma or crowded dark purple nuclei."""
    h, w = shape
    pink = np.array([232, 170, 200], np.float32) + rng.normal(0, 6, 3)
    patch = np.empty((h, w, 3), np.float32)
    patch[:] = pink
    patch += cv2.GaussianBlur(rng.normal(0, 8, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    count = int(rng.integers(28, 40) if tumour else rng.integers(3, 8))
    nucleus = np.array([90, 40, 130] if tumour else [140, 90, 170], np.float32)
    for _ in range(count):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, 6)), int(rng.integers(2, 5))) if tumour else (2, 1)
        color = tuple(float(c) for c in nucleus + rng.normal(0, 10, 3))
        cv2.ellipse(patch, centre, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return np.clip(patch, 0, 255).astype(np.uint8)
