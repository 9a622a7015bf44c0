"""The names a user chooses from: datasets, backbones and the ``--revert-fix`` words.

One table per concept. The CLI builds its choices from these tables, the
dataset readers and presets, the model and the training run read them too,
so a name is added or renamed here only. Standard library only: the CLI
imports this module before any framework, and ``--help`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """What a dataset name stands for, besides its reader (``data.readers``).

    Attributes:
        higher_is_better: MOS labels (``True``) or DMOS (``False``).
        by_reference: the images are distorted copies of reference images;
            random splits keep every reference (and its copies) on one side.
        resize: ``(H, W)`` every image is resized to before cropping, as the
            original code does (``data.presets`` says why), or ``None``.
        short_side: resize so the short side is this long, or ``None``.
    """

    higher_is_better: bool
    by_reference: bool
    resize: tuple | None = None
    short_side: int | None = None


DATASETS = {
    "live": Dataset(higher_is_better=False, by_reference=True),
    "csiq": Dataset(higher_is_better=False, by_reference=True),
    "tid2013": Dataset(higher_is_better=True, by_reference=True),
    "livec": Dataset(higher_is_better=True, by_reference=False),
    "koniq": Dataset(higher_is_better=True, by_reference=False, resize=(512, 384)),
    "bid": Dataset(higher_is_better=True, by_reference=False, resize=(512, 512)),
    "kadid": Dataset(higher_is_better=True, by_reference=True),
    "spaq": Dataset(higher_is_better=True, by_reference=False, short_side=512),
    # A labels.csv of the user's; its optional ref column groups the splits.
    "csv": Dataset(higher_is_better=True, by_reference=True),
}

# torchvision's ResNets, a small ResNet for CPU demos and tests, and the
# Swin Transformers of the Swin fork (swin_micro: a small one for tests).
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
SWINS = ("swin_tiny", "swin_small", "swin_base", "swin_micro")
BACKBONES = RESNETS + ("resnet_tiny",) + SWINS


def is_swin(backbone):
    return backbone in SWINS


# The words users give ``--revert-fix`` (named after each bug of the original
# solver), and the field of ``training.schedule.Fixes`` (named after what the
# fix does) that each one turns off.
REVERT_FIXES = {
    "filter": "hypernet_trains",
    "backbone-decay": "backbone_lr_decays",
    "optimizer-reset": "optimizer_state_kept",
}
