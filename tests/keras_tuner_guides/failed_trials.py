"""Adapted from the keras-io guide guides/keras_tuner/failed_trials.py ("Handling failed
trials in KerasTuner", Apache License 2.0, (c) the KerasTuner authors).

Changed, and nothing else (each changed line ends with `# adapted`): 2 epochs instead of 10.
The guide already uses small random arrays. The prose is dropped.
tests/test_keras_tuner_guides.py runs it with `import keras_tuner` and with that import
changed to `import tuner_service.keras_tuner as keras_tuner`.
"""

# ruff: noqa  (keras-io's code as the guide has it)

from tensorflow import keras
from tensorflow.keras import layers
import keras_tuner
import numpy as np


def build_model(hp):
    # Define the 2 hyperparameters for the units in dense layers
    units_1 = hp.Int("units_1", 10, 40, step=10)
    units_2 = hp.Int("units_2", 10, 30, step=10)

    # Define the model
    model = keras.Sequential([
        layers.Dense(units=units_1, input_shape=(20,)),
        layers.Dense(units=units_2),
        layers.Dense(units=1),
    ])
    model.compile(loss="mse")

    # Raise an error when the model is too large
    n_params = model.count_params()
    if n_params > 1200:
        raise ValueError(
            f"Model too large! It contains {n_params} params.")
    return model


tuner = keras_tuner.GridSearch(
    hypermodel=build_model,
    objective="val_loss",
    overwrite=True,
    max_retries_per_trial=3,
    max_consecutive_failed_trials=8,
)

# Use random data to train the model.
tuner.search(
    x=np.random.rand(100, 20),
    y=np.random.rand(100, 1),
    validation_data=(
        np.random.rand(100, 20),
        np.random.rand(100, 1),
    ),
    epochs=2,  # adapted
)

# Print the results.
tuner.results_summary()


def build_model(hp):
    # Define the 2 hyperparameters for the units in dense layers
    units_1 = hp.Int("units_1", 10, 40, step=10)
    units_2 = hp.Int("units_2", 10, 30, step=10)

    # Define the model
    model = keras.Sequential([
        layers.Dense(units=units_1, input_shape=(20,)),
        layers.Dense(units=units_2),
        layers.Dense(units=1),
    ])
    model.compile(loss="mse")

    # Raise an error when the model is too large
    n_params = model.count_params()
    if n_params > 1200:
        # When this error is raised, it skips the retries.
        raise keras_tuner.errors.FailedTrialError(
            f"Model too large! It contains {n_params} params.")
    return model


tuner = keras_tuner.GridSearch(
    hypermodel=build_model,
    objective="val_loss",
    overwrite=True,
    max_retries_per_trial=3,
    max_consecutive_failed_trials=8,
)

# Use random data to train the model.
tuner.search(
    x=np.random.rand(100, 20),
    y=np.random.rand(100, 1),
    validation_data=(
        np.random.rand(100, 20),
        np.random.rand(100, 1),
    ),
    epochs=2,  # adapted
)

# Print the results.
tuner.results_summary()


def build_model(hp):
    # Define the 2 hyperparameters for the units in dense layers
    units_1 = hp.Int("units_1", 10, 40, step=10)
    units_2 = hp.Int("units_2", 10, 30, step=10)

    # Define the model
    model = keras.Sequential([
        layers.Dense(units=units_1, input_shape=(20,)),
        layers.Dense(units=units_2),
        layers.Dense(units=1),
    ])
    model.compile(loss="mse")

    # Raise an error when the model is too large
    n_params = model.count_params()
    if n_params > 1200:
        # When this error is raised, the search is terminated.
        raise keras_tuner.errors.FatalError(
            f"Model too large! It contains {n_params} params.")
    return model


tuner = keras_tuner.GridSearch(
    hypermodel=build_model,
    objective="val_loss",
    overwrite=True,
    max_retries_per_trial=3,
    max_consecutive_failed_trials=8,
)

try:
    # Use random data to train the model.
    tuner.search(
        x=np.random.rand(100, 20),
        y=np.random.rand(100, 1),
        validation_data=(
            np.random.rand(100, 20),
            np.random.rand(100, 1),
        ),
        epochs=2,  # adapted
    )
except keras_tuner.errors.FatalError:
    print("The search is terminated.")
