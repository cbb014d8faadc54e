"""A keras-tuner style model builder for the handwritten digits (8x8 images, 10 classes).

The same function runs unchanged under keras-tuner and under tuner-service.
"""

import keras


def build_model(hp):
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten()])
    for i in range(hp.Int("num_layers", 1, 3, default=2)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 16, 256, step=16, default=128),
                                     activation=hp.Choice("activation", ["relu", "tanh"])))
        if hp.Boolean("dropout"):
            model.add(keras.layers.Dropout(0.2))
    model.add(keras.layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    optimizer = hp.Choice("optimizer", ["adam", "rmsprop", "sgd"])
    optimizer = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
                 "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9)}[optimizer](
        learning_rate=learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
