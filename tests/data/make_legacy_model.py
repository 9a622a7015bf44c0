"""Writes ``legacy_resnet_tiny.keras`` and ``legacy_resnet_tiny.npz`` (run from the repository root).

The committed files were written by the code of commit 5449b91, before the
fused batch-norm op and the block-chained backbone: ``tests/test_model_saving``
checks that files saved by that code load unchanged (same variables, same
scores) and that saving again stores the same variable paths. Re-running this
script with newer code writes files of that code instead.

    KERAS_BACKEND=torch python tests/data/make_legacy_model.py
"""

from pathlib import Path

import keras_hyperiqa  # noqa: F401  (torch unless KERAS_BACKEND is set)
import keras
import numpy as np

from keras_hyperiqa.model.hyperiqa import HyperIQA

HERE = Path(__file__).resolve().parent


def main():
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny", patch_size=32, lda_out=4, hyper_in=8,
                     target_dims=(32, 8, 4, 4, 2, 1), head_widths=(32, 16))
    model.build((None, 32, 32, 3))
    rng = np.random.default_rng(0)
    # non-trivial values everywhere, moving statistics included
    for v in model.variables:
        value = np.asarray(keras.ops.convert_to_numpy(v))
        if v.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, value.shape)
        elif v.path.endswith("moving_mean"):
            value = rng.normal(0, 0.5, value.shape)
        else:
            value = value + rng.normal(0, 0.02, value.shape)
        v.assign(value.astype("float32"))
    x = rng.uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    scores = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    model.save(HERE / "legacy_resnet_tiny.keras")
    np.savez(HERE / "legacy_resnet_tiny.npz", x=x, scores=scores)
    print(scores)


if __name__ == "__main__":
    main()
