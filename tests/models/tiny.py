"""Tiny models for tests: a conditional keras-tuner style builder and a HyperModel."""

import keras
import keras_tuner as kt


def build_model(hp):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten()])
    for i in range(hp.Int("num_layers", 1, 3, default=1)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 8, 64, step=8, default=32), activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    lr = hp.Float("learning_rate", 1e-3, 3e-2, sampling="log", default=1e-2)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class TunedFit(kt.HyperModel):
    """Tunes fit-time choices: shuffling and input normalisation, as in the workflows doc."""

    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, x, y, **kwargs):
        if hp.Boolean("normalize"):
            norm = keras.layers.Normalization(axis=None)
            norm.adapt(x)
            x = norm(x)
            val_x, val_y = kwargs["validation_data"]
            kwargs["validation_data"] = (norm(val_x), val_y)
        kwargs["shuffle"] = hp.Boolean("shuffle")
        return model.fit(x, y, **kwargs)


def not_compiled(hp):
    return keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])


def returns_string(hp):
    return "not a model"


def wrong_output_shape(hp):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def no_accuracy(hp):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def huge(hp):
    """Asks for ~400 GB of weights: allocation fails (out of memory) when the model is built."""
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(100_000_000_000 // 64), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def raises(hp):
    raise RuntimeError("boom in build")


def nan_sometimes(hp):
    """Produces a NaN loss when hp "poison" is on; a normal model otherwise."""
    poison = hp.Boolean("poison")
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
    if poison:
        model.add(keras.layers.Lambda(lambda x: x * float("nan")))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class Slow(kt.HyperModel):
    """Sleeps before fitting when $TUNER_TEST_SLEEP is set (not in the submit-time check), so
    tests can catch trials while they run."""

    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        import os
        import time

        time.sleep(float(os.environ.get("TUNER_TEST_SLEEP", "0")))
        return model.fit(*args, **kwargs)


class SlowEpochs(kt.HyperModel):
    """Sleeps $TUNER_TEST_EPOCH_SLEEP seconds after every epoch (to kill a trial mid-fit)."""

    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        import os
        import time

        pause = float(os.environ.get("TUNER_TEST_EPOCH_SLEEP", "0"))
        sleeper = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(pause))
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), sleeper]
        return model.fit(*args, **kwargs)


def wrong_input_shape(hp):
    """Expects flat 64-feature rows; the digits are 8x8 images: Keras' call error."""
    model = keras.Sequential([keras.layers.Input(shape=(64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
