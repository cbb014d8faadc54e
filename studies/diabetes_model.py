"""Tabular regression (workflows section 5): Normalization adapted on the training data,
Dense layers, a linear output, MSE loss and RMSE metric; objective val_loss (minimize)."""

import keras


class DiabetesModel:
    """A HyperModel-style object: build(hp) and fit(hp, model, x, y, **kwargs) adapts the
    Normalization layer on the training inputs before fitting."""

    def build(self, hp):
        self.norm = keras.layers.Normalization()
        model = keras.Sequential([keras.layers.Input(shape=(10,)), self.norm])
        for i in range(hp.Int("n_hidden", 1, 3, default=3)):
            model.add(keras.layers.Dense(hp.Int("n_neurons", 16, 128, step=16, default=48), activation="relu"))
        model.add(keras.layers.Dense(1))
        lr = hp.Float("learning_rate", 1e-4, 3e-2, sampling="log", default=1e-3)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="mse",
                      metrics=[keras.metrics.RootMeanSquaredError()])
        return model

    def fit(self, hp, model, x, y, **kwargs):
        self.norm.adapt(x)
        return model.fit(x, y, **kwargs)
