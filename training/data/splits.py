"""Train/validation/test splits: leakage-safe by default, the seed paper's protocol on request.

``leakage_safe_split`` keeps every group on one side: a patient where the release names
patients (CBIS-DDSM, IDC, mini-MIAS film pairs), merged with near-duplicate images
(``duplicates``: BUSI's re-cropped copies of one frame). Groups are assigned per stratum
(label or class name), largest first, each to the split furthest below its target share, in an
order shuffled by the seed. The split is saved as JSON with the sha256 of every image and mask
file, so ``verify`` can tell when the data under a split has changed.

``paper_protocol_split`` reproduces what the seed paper describes (augment the whole set about
5x, then split): copies ``0..factor-1`` of each image are split at random, so copies of one
image land on both sides. THIS PROTOCOL LEAKS test images into training and is reported only
for comparison with the paper's figures, never as a result on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from training.data.records import (
    DatasetFormatError,
    Sample,
    SplitError,
    SplitIntegrityError,
)

if TYPE_CHECKING:  # duplicates needs imagehash, absent from the serving environment
    from training.data.duplicates import DuplicateConfig, DuplicatePair

SPLIT_NAMES = ("train", "val", "test")
FORMAT = "breastdx.split/1"
LEAKAGE_SAFE = "leakage_safe"
PAPER = "paper_augment_then_split"

GroupBy = Literal["patient", "image"]
StratifyBy = Literal["label", "class_name"]
NearDuplicates = Literal["auto", "all", "none"]


@dataclass(frozen=True)
class SplitEntry:
    """One assignment: a sample (or, in the paper protocol, one augmented copy of it)."""

    sample_id: str
    split: str
    augmentation_index: int | None = None  # paper protocol: copy k (0 = the original image)
    augmentation_seed: int | None = None  # paper protocol: the seed that generates copy k


@dataclass(frozen=True)
class SampleRecord:
    """What a split file keeps about each sample."""

    group_id: str
    label: int
    class_name: str
    image_path: str
    image_sha256: str
    mask_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """A saved assignment of samples to named splits, with its parameters and file hashes."""

    protocol: str
    params: dict[str, Any]
    samples: dict[str, SampleRecord]
    entries: tuple[SplitEntry, ...]

    @property
    def leakage_safe(self) -> bool:
        return self.protocol == LEAKAGE_SAFE

    def names(self) -> tuple[str, ...]:
        return tuple(self.params.get("names", SPLIT_NAMES))

    def entries_of(self, name: str) -> list[SplitEntry]:
        return [e for e in self.entries if e.split == name]

    def ids(self, name: str) -> list[str]:
        """Sample ids of one split (each once, in entry order)."""
        return list(dict.fromkeys(e.sample_id for e in self.entries if e.split == name))

    def counts(self) -> dict[str, int]:
        """Entries per split."""
        return {name: len(self.entries_of(name)) for name in self.names()}

    def save(self, path: Path) -> None:
        """Write the split as JSON (sorted keys: identical splits give identical files)."""
        document = {
            "format": FORMAT,
            "protocol": self.protocol,
            "leakage_safe": self.leakage_safe,
            "params": self.params,
            "samples": {key: asdict(record) for key, record in sorted(self.samples.items())},
            "entries": [asdict(entry) for entry in self.entries],
        }
        Path(path).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by ``save``."""
        try:
            document = json.loads(Path(path).read_text())
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {FORMAT!r}")
            samples = {
                key: SampleRecord(**{**value, "mask_sha256": tuple(value["mask_sha256"])})
                for key, value in document["samples"].items()
            }
            entries = tuple(SplitEntry(**entry) for entry in document["entries"])
            return cls(document["protocol"], document["params"], samples, entries)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetFormatError(
                f"{path} is not a split file: {error}", path=str(path)
            ) from None


def leakage_safe_split(
    samples: list[Sample],
    *,
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int,
    group_by: GroupBy = "patient",
    stratify_by: StratifyBy = "label",
    near_duplicates: NearDuplicates = "auto",
    duplicate_config: DuplicateConfig | None = None,
    names: tuple[str, ...] = SPLIT_NAMES,
) -> Split:
    """Split so that no patient and no near-duplicate image straddles two splits.

    Args:
        samples: from one or several readers (ids must be unique).
        fractions: target share of samples per split, summing to 1.
        seed: the only source of randomness.
        group_by: ``patient`` joins samples of one patient where known; ``image`` does not.
        stratify_by: balance ``label`` (or ``class_name``) shares across splits, per group.
        near_duplicates: search duplicates among samples without a patient (``auto``), among
            all samples (``all``, slow for many images) or not at all (``none``).
        duplicate_config: thresholds of the duplicate search.
        names: split names, one per fraction.
    """
    from training.data.duplicates import DuplicateConfig

    _check(samples, fractions, names)
    config = duplicate_config or DuplicateConfig()
    groups, pairs = assign_groups(samples, group_by, near_duplicates, config)
    assignment = _assign(samples, groups, fractions, names, seed, stratify_by)
    params = {
        "names": list(names),
        "fractions": list(fractions),
        "seed": seed,
        "group_by": group_by,
        "stratify_by": stratify_by,
        "near_duplicates": near_duplicates,
        "duplicate_config": asdict(config),
        "near_duplicate_pairs": [[p.a, p.b, p.reason, p.score] for p in pairs],
        "n_samples": len(samples),
        "n_groups": len(set(groups.values())),
        "datasets": sorted({s.dataset for s in samples}),
    }
    entries = tuple(SplitEntry(s.id, assignment[groups[s.id]]) for s in samples)
    return Split(LEAKAGE_SAFE, _json_ready(params), _records(samples, groups), entries)


def paper_protocol_split(
    samples: list[Sample],
    *,
    factor: int = 5,
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int,
    names: tuple[str, ...] = SPLIT_NAMES,
) -> Split:
    """The seed paper's protocol: ``factor`` copies per image, split at random copy by copy.

    Copy 0 is the original image, copies 1..factor-1 are augmented with
    ``SplitEntry.augmentation_seed`` (``copy_seed``), so a trainer regenerates each copy
    identically. Copies of one image end up in train and test alike: the protocol leaks and is
    kept only to compare with the paper's figures.
    """
    _check(samples, fractions, names)
    if factor < 1:
        raise SplitError(f"factor must be >= 1, got {factor}")
    copies = [(s.id, k) for s in samples for k in range(factor)]
    order = np.random.default_rng(seed).permutation(len(copies))
    bounds = np.round(np.cumsum(fractions) * len(copies)).astype(int)
    which = np.searchsorted(bounds, np.arange(len(copies)), side="right")
    entries = []
    for position, index in enumerate(order):
        sample_id, k = copies[index]
        name = names[min(int(which[position]), len(names) - 1)]
        entries.append(SplitEntry(sample_id, name, k, copy_seed(seed, sample_id, k)))
    entries.sort(key=lambda e: (e.sample_id, e.augmentation_index or 0))
    params = {
        "names": list(names),
        "fractions": list(fractions),
        "seed": seed,
        "factor": factor,
        "leaks": True,
        "note": "augment-then-split as in the seed paper: copies of one image straddle splits",
        "n_samples": len(samples),
        "datasets": sorted({s.dataset for s in samples}),
    }
    groups = {s.id: s.group_id for s in samples}
    return Split(PAPER, _json_ready(params), _records(samples, groups), tuple(entries))


def copy_seed(seed: int, sample_id: str, index: int) -> int:
    """A stable 63-bit seed for augmented copy ``index`` of a sample."""
    digest = hashlib.sha256(f"{seed}:{sample_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def assign_groups(
    samples: list[Sample],
    group_by: GroupBy = "patient",
    near_duplicates: NearDuplicates = "auto",
    config: DuplicateConfig | None = None,
) -> tuple[dict[str, str], list[DuplicatePair]]:
    """``({sample id: group id}, duplicate pairs)``; a group is named after its smallest member's
    ``Sample.group_id`` (``patient:...`` or ``image:...``)."""
    if group_by not in ("patient", "image") or near_duplicates not in ("auto", "all", "none"):
        raise SplitError("group_by is 'patient' or 'image'; near_duplicates 'auto'|'all'|'none'")
    from training.data.duplicates import UnionFind, find_near_duplicates

    union = UnionFind([s.id for s in samples])
    if group_by == "patient":
        first: dict[str, str] = {}
        for sample in samples:
            union.union(first.setdefault(sample.group_id, sample.id), sample.id)
    pool = [] if near_duplicates == "none" else samples
    if near_duplicates == "auto":
        pool = [s for s in samples if s.patient_id is None]
    pairs = find_near_duplicates(pool, config)
    for pair in pairs:
        union.union(pair.a, pair.b)
    own = {s.id: s.group_id for s in samples}
    groups: dict[str, str] = {}
    for members in union.groups().values():
        name = min(own[m] for m in members)
        groups.update(dict.fromkeys(members, name))
    return groups, pairs


def verify(split: Split, samples: list[Sample]) -> None:
    """Check that ``samples`` still match ``split``.

    Raises:
        SplitIntegrityError: a sample of the split is missing, an image or mask file's sha256
            differs from the saved one, or (leakage-safe splits) a group straddles two splits.
    """
    by_id = {s.id: s for s in samples}
    missing = sorted(set(split.samples) - set(by_id))
    if missing:
        raise SplitIntegrityError(
            f"{len(missing)} sample(s) of the split are not in the data, e.g. {missing[0]!r}"
        )
    for sample_id, record in sorted(split.samples.items()):
        sample = by_id[sample_id]
        actual = (file_sha256(sample.image_path), tuple(map(file_sha256, sample.mask_paths)))
        if actual != (record.image_sha256, record.mask_sha256):
            raise SplitIntegrityError(
                f"files of sample {sample_id!r} changed since the split was made "
                f"(image sha256 {actual[0][:12]}..., saved {record.image_sha256[:12]}...)",
                sample=sample_id,
            )
    if split.leakage_safe:
        sides: dict[str, set[str]] = defaultdict(set)
        for entry in split.entries:
            sides[split.samples[entry.sample_id].group_id].add(entry.split)
        straddling = sorted(g for g, names in sides.items() if len(names) > 1)
        if straddling:
            raise SplitIntegrityError(
                f"{len(straddling)} group(s) straddle splits, e.g. {straddling[0]!r}: "
                "a group must lie in one split"
            )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(samples: list[Sample], fractions: tuple[float, ...], names: tuple[str, ...]) -> None:
    if not samples:
        raise SplitError("cannot split an empty list of samples")
    duplicated = [key for key, count in Counter(s.id for s in samples).items() if count > 1]
    if duplicated:
        raise SplitError(f"sample ids must be unique, {duplicated[0]!r} repeats")
    if len(fractions) != len(names) or len(set(names)) != len(names):
        raise SplitError(f"one distinct name per fraction: {list(names)} vs {list(fractions)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be >= 0 and sum to 1, got {list(fractions)}")


def _assign(
    samples: list[Sample],
    groups: dict[str, str],
    fractions: tuple[float, ...],
    names: tuple[str, ...],
    seed: int,
    stratify_by: StratifyBy,
) -> dict[str, str]:
    """Group id -> split name: per stratum, largest groups first (ties in seeded random order),
    each to the open split furthest below its target."""
    members: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        members[groups[sample.id]].append(sample)
    strata: dict[str, list[str]] = defaultdict(list)
    for group_id, group in sorted(members.items()):
        strata[_stratum(group, stratify_by)].append(group_id)
    rng = np.random.default_rng(seed)
    open_splits = [k for k, f in enumerate(fractions) if f > 0]
    assignment: dict[str, str] = {}
    for stratum in sorted(strata):
        ids = [strata[stratum][i] for i in rng.permutation(len(strata[stratum]))]
        ids.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the random order
        total, filled = sum(len(members[g]) for g in ids), [0] * len(names)
        for group_id in ids:
            k = max(open_splits, key=lambda j: fractions[j] * total - filled[j])
            filled[k] += len(members[group_id])
            assignment[group_id] = names[k]
    return assignment


def _stratum(group: list[Sample], stratify_by: StratifyBy) -> str:
    """A group's label (malignant if any member is) or its most common class name."""
    if stratify_by == "label":
        return str(max(s.label for s in group))
    counts = Counter(s.class_name for s in group)
    return min(counts, key=lambda name: (-counts[name], name))


def _json_ready(params: dict[str, Any]) -> dict[str, Any]:
    """Params as they read back from JSON (tuples become lists), so a loaded split compares
    equal to the one that was saved."""
    return dict(json.loads(json.dumps(params)))


def _records(samples: list[Sample], groups: dict[str, str]) -> dict[str, SampleRecord]:
    return {
        s.id: SampleRecord(
            group_id=groups[s.id],
            label=s.label,
            class_name=s.class_name,
            image_path=str(s.image_path),
            image_sha256=file_sha256(s.image_path),
            mask_sha256=tuple(file_sha256(p) for p in s.mask_paths),
        )
        for s in samples
    }


def subset_by_group(samples: list[Sample], max_samples: int, *, seed: int = 0) -> list[Sample]:
    """A seeded subset of whole groups (patients, near-duplicate sets) of about ``max_samples``.

    Groups are drawn in a seeded random order until the count reaches ``max_samples``, so a
    patient is never cut in two; the result keeps the input order. For small-machine runs only:
    the subset's class balance follows the groups drawn, not the whole set.
    """
    if max_samples < 1:
        raise SplitError(f"max_samples must be at least 1, got {max_samples}")
    if len(samples) <= max_samples:
        return list(samples)
    members: dict[str, list[str]] = {}
    for sample in samples:
        members.setdefault(sample.group_id, []).append(sample.id)
    names = sorted(members)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    chosen: set[str] = set()
    for group in order:
        if len(chosen) >= max_samples:
            break
        chosen.update(members[group])
    return [s for s in samples if s.id in chosen]


def split_per_dataset(
    samples: list[Sample], *, fractions: tuple[float, ...] = (0.7, 0.15, 0.15), seed: int
) -> Split:
    """A leakage-safe split made for each data set on its own, then merged.

    Each data set keeps the split it would get alone (e.g. BUSI's committed one), and every data
    set has its own test part: figures are reported per data set. Sample ids must be unique
    across the data sets.
    """
    by_dataset: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_dataset[sample.dataset].append(sample)
    parts = {
        name: leakage_safe_split(members, fractions=fractions, seed=seed)
        for name, members in sorted(by_dataset.items())
    }
    return merge_splits(parts)


def merge_splits(parts: dict[str, Split]) -> Split:
    """One split holding every part's samples and entries; ``params["parts"]`` keeps each part's
    own parameters under its data set's name."""
    if not parts or any(not p.leakage_safe for p in parts.values()):
        raise SplitError("merge_splits takes one or more leakage-safe splits")
    samples: dict[str, SampleRecord] = {}
    entries: list[SplitEntry] = []
    for name, part in parts.items():
        clash = sorted(set(samples) & set(part.samples))
        if clash:
            raise SplitError(f"sample id {clash[0]!r} of {name} is in two data sets' splits")
        samples.update(part.samples)
        entries.extend(part.entries)
    first = next(iter(parts.values()))
    params = {
        "names": list(first.names()),
        "datasets": sorted({d for p in parts.values() for d in p.params.get("datasets", [])}),
        "n_samples": len(samples),
        "parts": {name: part.params for name, part in parts.items()},
    }
    return Split(LEAKAGE_SAFE, _json_ready(params), samples, tuple(entries))
