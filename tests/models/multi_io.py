"""A tiny two-input, two-output functional model (the wide-and-deep shape) and data functions
for it, good and bad, on scikit-learn's diabetes data."""

import keras
import numpy as np
from sklearn.datasets import load_diabetes


def build_model(hp):
    wide = keras.Input(shape=(5,), name="wide")
    deep = keras.Input(shape=(6,), name="deep")
    hidden = keras.layers.Dense(hp.Int("units", 8, 16, step=8), activation="relu")(deep)
    main = keras.layers.Dense(1, name="main")(keras.layers.concatenate([wide, hidden]))
    aux = keras.layers.Dense(1, name="aux")(hidden)
    model = keras.Model(inputs=[wide, deep], outputs=[main, aux])
    model.compile(optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-2, 1e-1, sampling="log")),
                  loss={"main": "mse", "aux": "mse"}, loss_weights={"main": 0.9, "aux": 0.1},
                  metrics={"main": [keras.metrics.RootMeanSquaredError()], "aux": [keras.metrics.RootMeanSquaredError()]})
    return model


def _xy():
    x, y = load_diabetes(return_X_y=True)
    return x.astype("float32"), (y / 100.0).astype("float32")


def load_dicts():
    x, y = _xy()
    return {"wide": x[:, :5], "deep": x[:, -6:]}, {"main": y, "aux": y}


def load_tuples():
    """The form the issue reported failing: ((x_wide, x_deep), (y, y))."""
    x, y = _xy()
    return (x[:, :5], x[:, -6:]), (y, y)


def load_mismatched_counts():
    x, y = _xy()
    return {"wide": x[:, :5], "deep": x[:-1, -6:]}, {"main": y, "aux": y}


def load_wrong_keys():
    x, y = _xy()
    return {"wide": x[:, :5], "deeep": x[:, -6:]}, {"main": y, "aux": y}


def load_raises():
    raise FileNotFoundError("no such file: /data/housing.csv")


def load_one_sample_class():
    """Integer labels where class 9 has a single sample: cannot be stratified."""
    x, _ = _xy()
    labels = np.arange(len(x)) % 3
    labels[0] = 9
    return x, labels.astype("int64")
