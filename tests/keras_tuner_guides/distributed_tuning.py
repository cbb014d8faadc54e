"""Adapted from the keras-io guide guides/keras_tuner/distributed_tuning.py ("Distributed
hyperparameter tuning", Apache License 2.0, (c) the KerasTuner authors).

Changed, and nothing else (each changed line ends with `# adapted`): the data (MNIST ->
_data.mnist_like(), scikit-learn's digits in MNIST's shape: no download) and the budget
(200 training samples, steps_per_epoch 600 -> 5, validation_steps 100 -> 2), and
`AveragePooling2D()` gets Keras 3's required `pool_size` (the original fails under keras_tuner
too, for every trial that draws "avg" pooling). The prose is dropped. Run it once, or as a chief/worker group: the same script with KERASTUNER_TUNER_ID
("chief", "tuner0", ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set.
tests/test_keras_tuner_guides.py runs it with `import keras_tuner` and with that import
changed to `import tuner_service.keras_tuner as keras_tuner`.
"""

# ruff: noqa  (keras-io's code as the guide has it)

import keras_tuner
import tensorflow as tf
import numpy as np
from _data import mnist_like  # adapted


def build_model(hp):
    """Builds a convolutional model."""
    inputs = tf.keras.Input(shape=(28, 28, 1))
    x = inputs
    for i in range(hp.Int("conv_layers", 1, 3, default=3)):
        x = tf.keras.layers.Conv2D(
            filters=hp.Int("filters_" + str(i), 4, 32, step=4, default=8),
            kernel_size=hp.Int("kernel_size_" + str(i), 3, 5),
            activation="relu",
            padding="same",
        )(x)

        if hp.Choice("pooling" + str(i), ["max", "avg"]) == "max":
            x = tf.keras.layers.MaxPooling2D()(x)
        else:
            x = tf.keras.layers.AveragePooling2D(pool_size=2)(x)  # adapted

        x = tf.keras.layers.BatchNormalization()(x)
        x = tf.keras.layers.ReLU()(x)

    if hp.Choice("global_pooling", ["max", "avg"]) == "max":
        x = tf.keras.layers.GlobalMaxPooling2D()(x)
    else:
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)

    model = tf.keras.Model(inputs, outputs)

    optimizer = hp.Choice("optimizer", ["adam", "sgd"])
    model.compile(
        optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


tuner = keras_tuner.Hyperband(
    hypermodel=build_model,
    objective="val_accuracy",
    max_epochs=2,
    factor=3,
    hyperband_iterations=1,
    distribution_strategy=tf.distribute.MirroredStrategy(),
    directory="results_dir",
    project_name="mnist",
    overwrite=True,
)

(x_train, y_train), (x_test, y_test) = mnist_like()  # adapted

# Reshape the images to have the channel dimension.
x_train = (x_train.reshape(x_train.shape + (1,)) / 255.0)[:200]  # adapted
y_train = y_train.astype(np.int64)[:200]  # adapted
x_test = (x_test.reshape(x_test.shape + (1,)) / 255.0)[:100]
y_test = y_test.astype(np.int64)[:100]

tuner.search(
    x_train,
    y_train,
    steps_per_epoch=5,  # adapted
    validation_data=(x_test, y_test),
    validation_steps=2,  # adapted
    callbacks=[tf.keras.callbacks.EarlyStopping("val_accuracy")],
)
