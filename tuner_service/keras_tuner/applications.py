"""keras-tuner's ready-made hypermodels (``HyperResNet``, ``HyperXception``, ``HyperEfficientNet``,
``HyperImageAugment``): keras-tuner's own classes."""

from keras_tuner.applications import HyperEfficientNet, HyperImageAugment, HyperResNet, HyperXception

__all__ = ["HyperEfficientNet", "HyperImageAugment", "HyperResNet", "HyperXception"]
