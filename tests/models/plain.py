"""A plain builder for the grid tuner (SciKeras routes model__units to it)."""

import keras


def build_model(units=32):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(units, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def build_hp(hp):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(hp.Choice("units", [16, 32]), activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    opt = hp.Choice("optimizer", ["adam", "rmsprop"])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def build_continuous(hp):
    lr = hp.Float("lr", 1e-4, 1e-2)
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
