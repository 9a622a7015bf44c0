"""Per-dataset preprocessing presets that match the original HyperIQA code.

``resize`` is an (H, W) applied to every image (PIL bilinear, like
torchvision's ``Resize((H, W))``) before cropping: KonIQ-10k is squashed to
512x384 (height 512, width 384: the 1024x768 landscape images become portrait,
which is how the released checkpoint was trained) and BID to 512x512. The
other datasets are used at native resolution, except SPAQ, which the original
does not use and whose 4000x3000 phone photos are by common practice resized
so the short side is 512 (``short_side``). Every value is overridable: pass
``resize=`` / ``short_side=`` to ``preset()`` or straight to ``PatchDataset``.
The values sit in the table of dataset names, ``keras_hyperiqa.names.DATASETS``.
"""

from __future__ import annotations

from keras_hyperiqa.errors import UserError
from keras_hyperiqa.names import DATASETS

PRESETS: dict[str, dict] = {
    name: dict(patch_size=224, train_patches=25, test_patches=25,
               resize=facts.resize, short_side=facts.short_side)
    for name, facts in DATASETS.items()
}


def preset(name: str, **overrides) -> dict:
    """A copy of ``PRESETS[name]`` with ``overrides`` applied (unknown keys are an error)."""
    if name not in PRESETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(PRESETS))}")
    out = dict(PRESETS[name])
    for key, value in overrides.items():
        if key not in out:
            raise UserError(f"unknown preset option {key!r} for {name}; known: {', '.join(sorted(out))}")
        out[key] = value
    return out
