"""SciKeras estimators with the scikit-learn tags they mean to have.

SciKeras 0.13 declares its kind with the old ``_estimator_type`` attribute; scikit-learn 1.6+
reads tags instead, so ``is_classifier(KerasClassifier(...))`` is False and GridSearchCV
silently uses unstratified ``KFold`` for an integer ``cv`` on a classifier. These subclasses
declare the tag, so ``check_cv`` picks ``StratifiedKFold`` as scikit-learn intends. Imported
lazily: SciKeras imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from scikeras.wrappers import KerasClassifier as _KerasClassifier
from scikeras.wrappers import KerasRegressor as _KerasRegressor


class KerasClassifier(_KerasClassifier):
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        return tags


class KerasRegressor(_KerasRegressor):
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        return tags
