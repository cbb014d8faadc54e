"""The data the adapted guides use instead of downloads: scikit-learn's handwritten digits
(1,797 8x8 images, shipped inside scikit-learn) in MNIST's shape and dtype (28x28 uint8, each
pixel scaled to 0..255 and repeated 3x3, padded by 2), so the guides' model code runs unchanged."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits


def mnist_like(n_train: int = 1500) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``keras.datasets.mnist.load_data()``'s ((x_train, y_train), (x_test, y_test)) from digits."""
    digits = load_digits()
    images = np.kron(digits.images / 16.0 * 255.0, np.ones((3, 3)))  # 8x8 -> 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).round().astype("uint8")  # -> 28x28
    labels = digits.target.astype("uint8")
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])
