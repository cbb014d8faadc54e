"""A small conv net on scikit-learn's digits for the GPU agent benchmark (benchmarks/gpu/).

The 8x8 images are upsampled to 64x64 so that each step does real convolution work on the GPU
(about 1 GFLOP per sample forward at the widest setting), while a trial still takes seconds.
Runs on any Keras 3 backend (the benchmark uses KERAS_BACKEND=jax).
"""

import keras


def build_model(hp):
    filters = hp.Choice("filters", [32, 64, 128], default=64)
    model = keras.Sequential([
        keras.layers.Input(shape=(8, 8)),
        keras.layers.Reshape((8, 8, 1)),
        keras.layers.UpSampling2D(size=8),  # 64x64
        keras.layers.Conv2D(filters // 2, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),  # 32x32
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(4),  # 8x8
        keras.layers.Flatten(),
        keras.layers.Dense(hp.Int("units", 64, 256, step=64, default=128), activation="relu"),
    ])
    if hp.Boolean("dropout"):
        model.add(keras.layers.Dropout(0.2))
    model.add(keras.layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=1e-3)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
