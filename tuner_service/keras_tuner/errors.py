"""keras-tuner's errors (``FailedTrialError``, ``FatalError`` and its subclasses): keras-tuner's
own classes, so ``except keras_tuner.errors.FatalError`` catches them from either import."""

from keras_tuner.errors import FailedTrialError, FatalError, FatalRuntimeError, FatalTypeError, FatalValueError

__all__ = ["FailedTrialError", "FatalError", "FatalRuntimeError", "FatalTypeError", "FatalValueError"]
