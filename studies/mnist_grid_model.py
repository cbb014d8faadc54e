"""The classic SciKeras workflow: a plain builder returning a compiled model (section 1 of the
workflows), searched with GridSearchCV's grid. Runs on the embedded digits data by default;
point data.source at keras:mnist (and the input shape at 28x28) for the original."""

import keras


def build_model(units=512, input_shape=(8, 8)):
    model = keras.Sequential([
        keras.layers.Input(shape=input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
