"""The data room: dataset readers, validation, splits, presets, the patch pipeline, the demo set.

Modules: ``records`` (Record, DatasetInfo, Problem), ``readers`` (read_dataset,
DATASETS), ``validate`` (validate, validated), ``splits`` (make_splits,
official_split, save_splits, load_splits), ``presets`` (PRESETS, preset),
``images`` (load_rgb, resize_hw, ensure_min_side), ``pipeline`` (PatchDataset,
grid_offsets), ``demo`` (demo_root). None of them imports keras, torch or jax.
"""
