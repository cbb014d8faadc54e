"""keras-tuner's oracles: keras-tuner's own classes. A tuner maps them onto the service
(``tuner_service.keras_tuner._strategies``); a subclass with its own ``populate_space``
proposes the values of each new trial."""

from keras_tuner.oracles import BayesianOptimizationOracle, GridSearchOracle, HyperbandOracle, RandomSearchOracle

__all__ = ["BayesianOptimizationOracle", "GridSearchOracle", "HyperbandOracle", "RandomSearchOracle"]
