"""Two inputs and two targets for the wide-and-deep model: the wide input is the first five
features, the deep input the last six (they overlap, as in the course material), and both
outputs learn the same target (the auxiliary one regularises the deep path)."""

import numpy as np


def _wide_deep(x, y):
    x, y = np.asarray(x, dtype="float32"), np.asarray(y, dtype="float32")
    return {"wide": x[:, :5], "deep": x[:, -6:]}, {"main": y, "aux": y}


def load_data():
    """scikit-learn's diabetes data (442 patients, 10 features), shipped with scikit-learn."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return _wide_deep(x, y)


def load_california():
    """California housing (20,640 districts, 8 features): needs scikit-learn's cached download
    (fetch_california_housing() once with network access)."""
    from sklearn.datasets import fetch_california_housing

    bunch = fetch_california_housing(download_if_missing=False)
    return _wide_deep(bunch.data, bunch.target)
