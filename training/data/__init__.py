"""Data sets of the seed paper, torch-free: readers, synthetic copies, splits, pixel loading.

- ``records``: ``Sample`` (what every reader returns) and ``DatasetError`` and its subclasses.
- ``busi``, ``cbis_ddsm`` (+ ``cbis_ddsm_files``), ``mias``, ``idc``: readers of the releases'
  own layouts, each returning a deterministically sorted ``list[Sample]``.
- ``synthetic`` (+ ``synthetic_cbis``, ``synthetic_draw``): small copies in the same layouts.
- ``duplicates`` and ``splits``: near-duplicate grouping, leakage-safe and paper-protocol splits.
- ``dataset``: ``load_sample`` -> (image float32 (H, W, C) in [0, 1], mask uint8 (H, W)).
"""
