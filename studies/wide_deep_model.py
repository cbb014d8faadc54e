"""The wide-and-deep network (functional API, two inputs, an auxiliary output), as a HyperModel:
``build(hp)`` makes the graph, ``fit`` adapts the Normalization layers on the training inputs."""

import keras
import keras_tuner as kt


class WideAndDeep(kt.HyperModel):
    def build(self, hp):
        input_wide = keras.Input(shape=(5,), name="wide")
        input_deep = keras.Input(shape=(6,), name="deep")
        self.norm_wide = keras.layers.Normalization(name="norm_wide")
        self.norm_deep = keras.layers.Normalization(name="norm_deep")
        wide, hidden = self.norm_wide(input_wide), self.norm_deep(input_deep)
        for i in range(hp.Int("n_hidden", 1, 3, default=2)):
            hidden = keras.layers.Dense(hp.Int("n_neurons", 16, 64, step=16, default=32), activation="relu",
                                        name=f"hidden_{i}")(hidden)
        concat = keras.layers.concatenate([wide, hidden])
        output = keras.layers.Dense(1, name="main")(concat)
        aux_output = keras.layers.Dense(1, name="aux")(hidden)
        model = keras.Model(inputs=[input_wide, input_deep], outputs=[output, aux_output])
        learning_rate = hp.Float("learning_rate", 1e-3, 1e-1, sampling="log", default=1e-2)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                      loss={"main": "mse", "aux": "mse"},
                      loss_weights={"main": 0.9, "aux": hp.Choice("aux_weight", [0.1, 0.3], default=0.1)},
                      metrics={"main": [keras.metrics.RootMeanSquaredError()],
                               "aux": [keras.metrics.RootMeanSquaredError()]})
        return model

    def fit(self, hp, model, x, y, **kwargs):
        self.norm_wide.adapt(x["wide"])
        self.norm_deep.adapt(x["deep"])
        return model.fit(x, y, **kwargs)
