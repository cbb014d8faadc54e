"""The Keras model styles beyond Sequential, for tests: a keras.Model subclass (without
get_config), a functional model with a custom layer, and a custom callback."""

import json

import keras


class MLP(keras.Model):
    """A subclassed classifier for the 8x8 digits; its constructor arguments are not in any config."""

    def __init__(self, units=16, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(units, activation=activation)
        self.head = keras.layers.Dense(10, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(self.flatten(x)))


def build_subclassed(hp):
    model = MLP(units=hp.Int("units", 24, 48, step=8, default=32), activation=hp.Choice("activation", ["tanh", "relu"]))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Scale(keras.layers.Layer):
    """A custom layer with a constructor argument (serialisable through Keras' automatic config)."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


def build_custom_layer(hp):
    inputs = keras.Input(shape=(8, 8))
    x = Scale(factor=hp.Choice("factor", [0.5, 2.0]))(keras.layers.Flatten()(inputs))
    x = keras.layers.Dense(hp.Int("units", 16, 32, step=16), activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class RecordEpochs(keras.callbacks.Callback):
    """Appends one JSON line per epoch to ``filename``: its logs, the optimizer's learning rate
    and the number of training batches it ran."""

    def __init__(self, filename="epochs.jsonl"):
        super().__init__()
        self.filename = filename
        self.batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        record = {"epoch": epoch, "lr": lr, "batches": self.batches, "logs": {k: float(v) for k, v in logs.items()}}
        with open(self.filename, "a") as f:
            f.write(json.dumps(record) + "\n")


class PrintValTrainRatio(keras.callbacks.Callback):
    """The course material's callback: prints val_loss / loss after every epoch."""

    def on_epoch_end(self, epoch, logs=None):
        print(f"Epoch={epoch}, val/train={logs['val_loss'] / logs['loss']:.2f}")
