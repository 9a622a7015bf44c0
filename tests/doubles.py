"""Small stand-ins for the HyperIQA model and the data sources.

Used by the training tests (in-process and in the jax subprocess) and handy
for smoke-testing the CLI wiring: they follow exactly the interfaces the
trainer relies on, at a size that trains in milliseconds.
"""

import keras
import numpy as np
from keras import layers


class TinyIQA(keras.Model):
    """A two-group model with HyperIQA's trainer-facing interface.

    ``(N, P, P, 3)`` float32 in [0, 255] -> ``(N,)`` scores. The "backbone"
    is Dense(hidden, tanh) over the flattened, rescaled pixels (optionally
    followed by BatchNorm, to exercise non-trainable state); the "hypernet"
    is Dense(hidden2, tanh) + Dense(1).

    Attributes:
        backbone_variables, hypernet_variables: disjoint lists covering all
            trainable variables, like ``HyperIQA``'s.
    """

    def __init__(self, patch=4, hidden=8, hidden2=6, batchnorm=False,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        init = lambda s: keras.initializers.GlorotUniform(seed=seed + s)
        self.patch = patch
        self.flatten = layers.Flatten()
        self.body = layers.Dense(hidden, activation="tanh",
                                 kernel_initializer=init(1), name="body")
        self.norm = layers.BatchNormalization(name="norm") if batchnorm else None
        self.head1 = layers.Dense(hidden2, activation="tanh",
                                  kernel_initializer=init(2), name="head1")
        self.head2 = layers.Dense(1, kernel_initializer=init(3), name="head2")
        self.build((None, patch, patch, 3))

    def build(self, input_shape):
        flat = input_shape[1] * input_shape[2] * input_shape[3]
        self.body.build((None, flat))
        if self.norm is not None:
            self.norm.build((None, self.body.units))
        self.head1.build((None, self.body.units))
        self.head2.build((None, self.head1.units))
        self.built = True

    def call(self, x, training=False):
        h = self.flatten(x) / 255.0
        h = self.body(h)
        if self.norm is not None:
            h = self.norm(h, training=training)
        h = self.head1(h)
        return keras.ops.reshape(self.head2(h), (-1,))

    @property
    def backbone_variables(self):
        out = list(self.body.trainable_variables)
        if self.norm is not None:
            out += list(self.norm.trainable_variables)
        return out

    @property
    def hypernet_variables(self):
        return list(self.head1.trainable_variables) + list(
            self.head2.trainable_variables
        )


class ArrayTrainSource:
    """In-memory train source: images with labels, random patches per epoch.

    Each epoch draws ``patches_per_image`` random ``patch x patch`` crops per
    image, shuffles them and yields batches; everything derives from
    ``(seed, epoch)`` so the stream is identical across runs and resumes.
    """

    def __init__(self, images, labels, patch=4, patches_per_image=2,
                 batch_size=4, seed=0):
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.patch = patch
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.seed = seed

    @property
    def steps_per_epoch(self):
        n = len(self.images) * self.patches_per_image
        return -(-n // self.batch_size)

    def train_batches(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        n, h, w, _ = self.images.shape
        img = np.repeat(np.arange(n), self.patches_per_image)
        top = rng.integers(0, h - self.patch + 1, size=img.size)
        left = rng.integers(0, w - self.patch + 1, size=img.size)
        order = rng.permutation(img.size)
        for start in range(0, img.size, self.batch_size):
            sel = order[start:start + self.batch_size]
            x = np.stack([
                self.images[img[i], top[i]:top[i] + self.patch,
                            left[i]:left[i] + self.patch]
                for i in sel
            ])
            yield x, self.labels[img[sel]]


class ArrayEvalSource:
    """In-memory eval source: fixed crops (seeded once), batches of patches."""

    def __init__(self, images, labels, patch=4, patches_per_image=3,
                 batch_size=5, seed=1):
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.patch = patch
        self.batch_size = batch_size
        rng = np.random.default_rng(seed)
        n, h, w, _ = self.images.shape
        self._img = np.repeat(np.arange(n), patches_per_image)
        self._top = rng.integers(0, h - patch + 1, size=self._img.size)
        self._left = rng.integers(0, w - patch + 1, size=self._img.size)

    def eval_batches(self):
        for start in range(0, self._img.size, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, self._img.size))
            x = np.stack([
                self.images[self._img[i], self._top[i]:self._top[i] + self.patch,
                            self._left[i]:self._left[i] + self.patch]
                for i in idx
            ])
            yield x, self._img[idx]


def toy_dataset(n_images=12, size=6, seed=0):
    """Random images in [0, 255] with labels correlated to their brightness."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n_images, size, size, 3)).astype(
        np.float32
    )
    labels = (images.mean(axis=(1, 2, 3)) / 255.0 * 10.0
              + rng.normal(0, 0.3, n_images)).astype(np.float32)
    return images, labels
