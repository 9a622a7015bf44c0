"""Training room: HyperAdam, the HyperIQA schedule, the trainer, checkpoints.

Typical wiring (what the CLI does)::

    keras.utils.set_random_seed(seed)
    with precision_scope(precision):             # "bf16": GPU runs; "fp32" default
        model = HyperIQA(...)                    # (keras_hyperiqa.model.hyperiqa)
    optimizer = HyperAdam(learning_rate=lr, weight_decay=5e-4)
    trainer = Trainer(model, optimizer)          # builds the optimizer
    schedule = HyperIQASchedule(optimizer, model.backbone_variables,
                                model.hypernet_variables, lr=lr,
                                lr_ratio=10, fixes=Fixes())
    initial_epoch = 0
    if resume and latest_checkpoint(ckpt_dir):
        initial_epoch = trainer.restore(latest_checkpoint(ckpt_dir))
    trainer.fit(train, epochs, val=val, test=test, initial_epoch=initial_epoch,
                callbacks=[schedule, CheckpointCallback(ckpt_dir, trainer),
                           HistoryCSVLogger(csv_path, trainer)])

``ckpt_dir/last.npz`` is the latest completed epoch (model variables, every
optimizer variable, loop position and history, written atomically). Rounds:
``keras_hyperiqa.experiment.fit`` does the above once per split of
``keras_hyperiqa.data.splits.make_splits`` (seed ``seed + round``);
:func:`round_report` gives each round's test metrics at the epoch selected on
``val_srcc`` plus the optimistic best-test epoch, :func:`summarize_rounds`
their medians.
"""

from keras_hyperiqa.training.checkpoint import (
    CheckpointCallback,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from keras_hyperiqa.metrics import (
    image_level_metrics,
    iqa_metrics,
)
from keras_hyperiqa.training.keras_fit import ImageCorrelation, PatchPyDataset
from keras_hyperiqa.training.optimizer import HyperAdam
from keras_hyperiqa.training.run import (
    round_report,
    summarize_rounds,
)
from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule, epoch_rates
from keras_hyperiqa.training.trainer import HistoryCSVLogger, Trainer, l1_loss

__all__ = [
    "CheckpointCallback",
    "Fixes",
    "HistoryCSVLogger",
    "HyperAdam",
    "HyperIQASchedule",
    "ImageCorrelation",
    "PatchPyDataset",
    "Trainer",
    "epoch_rates",
    "image_level_metrics",
    "iqa_metrics",
    "l1_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "read_state",
    "round_report",
    "save_checkpoint",
    "summarize_rounds",
]
