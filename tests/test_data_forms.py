"""Data sources with several inputs and outputs: every accepted form, split row by row.

The loaders here are plain numpy files written per test; every array carries each sample's row
number in its first column, so a split that indexed one array differently from another shows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tuner_service import data
from tuner_service.errors import BadInput
from tuner_service.spec import DataSpec

N = 120


def write_loader(directory, body: str, name: str = "loader.py") -> str:
    path = directory / name
    path.write_text("import numpy as np\n\n"
                    f"N = {N}\n"
                    "ROWS = np.arange(N, dtype='float32')\n"
                    "WIDE = np.stack([ROWS, ROWS * 2, ROWS * 3], axis=1)\n"
                    "DEEP = np.stack([ROWS, -ROWS], axis=1)\n"
                    "LABELS = (np.arange(N) % 3).astype('int64')\n\n" + body)
    return str(path)


def rows_of(x) -> np.ndarray:
    return np.asarray(x)[:, 0] if np.ndim(x) > 1 else np.asarray(x)


def assert_aligned(x, y) -> list[int]:
    """Every input and target of a split holds the same rows, in the same order."""
    arrays = [*(x.values() if isinstance(x, dict) else x), *(y.values() if isinstance(y, dict) else y)]
    first = rows_of(arrays[0])
    for a in arrays[1:]:
        np.testing.assert_array_equal(rows_of(a), first)
    return first.astype(int).tolist()


def test_dict_inputs_and_targets_are_split_by_the_same_rows(tmp_path):
    loader = write_loader(tmp_path, "def load_data():\n"
                                    "    return {'wide': WIDE, 'deep': DEEP}, {'main': ROWS, 'aux': ROWS.copy()}\n")
    d = data.load(DataSpec(source=f"{loader}:load_data", validation_split=0.25, test_split=0.2), seed=3)
    seen = []
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert set(x) == {"wide", "deep"} and set(y) == {"main", "aux"}
        seen += assert_aligned(x, y)
    assert sorted(seen) == list(range(N)), "every sample lands in exactly one split"
    # The rows are the ones scikit-learn's own split of a single array gives.
    rest, test = train_test_split(np.arange(N), test_size=0.2, random_state=3)
    train, val = train_test_split(rest, test_size=0.25, random_state=3)
    assert rows_of(d.x_test["wide"]).astype(int).tolist() == test.tolist()
    assert rows_of(d.x_val["deep"]).astype(int).tolist() == val.tolist()
    assert d.sizes == {"train": len(train), "validation": len(val), "test": len(test)}
    assert d.task == "regression"


def test_a_single_array_splits_exactly_as_before(tmp_path):
    """Existing studies keep their split: digits equals train_test_split on the arrays, stratified."""
    d = data.load(DataSpec(source="sklearn:digits"), seed=42)
    bunch = load_digits()
    x, y = (bunch.images / 16.0).astype("float32"), bunch.target.astype("int64")
    x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)
    for got, want in ((d.x_train, x_train), (d.y_val, y_val), (d.x_test, x_test), (d.y_test, y_test)):
        np.testing.assert_array_equal(got, want)


def test_tuples_of_inputs_and_outputs_are_several_inputs_and_outputs(tmp_path):
    """((x_wide, x_deep), (y_main, y_aux)): the form issue 18 saw read as a train/test pair."""
    loader = write_loader(tmp_path, "def load_data():\n    return (WIDE, DEEP), (ROWS, ROWS * 10)\n")
    d = data.load(DataSpec(source=f"{loader}:load_data"), seed=0)
    assert isinstance(d.x_train, list) and len(d.x_train) == 2 and d.x_train[0].shape[1] == 3
    assert isinstance(d.y_train, list) and len(d.y_train) == 2
    np.testing.assert_array_equal(d.y_train[1], d.y_train[0] * 10)
    assert_aligned(d.x_train, [d.y_train[0]])


def test_the_sources_own_test_split_with_dict_inputs(tmp_path):
    loader = write_loader(tmp_path, "def load_data():\n"
                                    "    x = {'wide': WIDE, 'deep': DEEP}\n"
                                    "    test = {'wide': WIDE[:10] + 1000, 'deep': DEEP[:10] + 1000}\n"
                                    "    return (x, ROWS), (test, ROWS[:10] + 1000)\n")
    d = data.load(DataSpec(source=f"{loader}:load_data"), seed=0)
    assert rows_of(d.x_test["wide"]).tolist() == [1000.0 + i for i in range(10)]
    assert d.sizes["train"] + d.sizes["validation"] == N
    assert_aligned(d.x_test, [d.y_test])


def test_a_dict_return_names_its_parts(tmp_path):
    loader = write_loader(tmp_path, "def load_data():\n"
                                    "    return {'x': [WIDE, DEEP], 'y': LABELS, 'x_test': [WIDE[:6], DEEP[:6]],\n"
                                    "            'y_test': LABELS[:6]}\n")
    d = data.load(DataSpec(source=f"{loader}:load_data"), seed=0)
    assert d.sizes["test"] == 6 and d.task == "classification"


def test_a_pair_of_pairs_that_reads_both_ways_is_refused(tmp_path):
    loader = write_loader(tmp_path, "def load_data():\n    return (DEEP, DEEP), (DEEP, DEEP)\n")
    with pytest.raises(BadInput, match="reads both as"):
        data.load(DataSpec(source=f"{loader}:load_data"), seed=0)


@pytest.mark.parametrize("targets, stratified", [("LABELS", True), ("{'label': LABELS}", True),
                                                 ("{'label': LABELS, 'other': LABELS}", False)])
def test_stratification_uses_the_single_target(tmp_path, targets, stratified):
    loader = write_loader(tmp_path, f"def load_data():\n    return {{'wide': WIDE}}, {targets}\n")
    d = data.load(DataSpec(source=f"{loader}:load_data", test_split=0.25), seed=7)
    labels = np.arange(N) % 3
    rest, test = train_test_split(np.arange(N), test_size=0.25, random_state=7,
                                  stratify=labels if stratified else None)
    assert rows_of(d.x_test["wide"]).astype(int).tolist() == test.tolist()


def test_stratify_false_splits_labels_that_cannot_be_stratified(tmp_path):
    loader = write_loader(tmp_path, "def load_data():\n    y = LABELS.copy()\n    y[0] = 9\n    return WIDE, y\n")
    source = f"{loader}:load_data"
    with pytest.raises(BadInput, match=r"class 9 has 1 sample; .* set data.stratify: false"):
        data.load(DataSpec(source=source), seed=0)
    d = data.load(DataSpec(source=source, stratify=False), seed=0)
    assert sum(d.sizes.values()) == N


def test_npz_with_several_inputs_and_outputs(tmp_path):
    rows = np.arange(N, dtype="float32")
    wide, deep = np.stack([rows, rows], 1), np.stack([rows, -rows, rows], 1)
    np.savez(tmp_path / "plain.npz", x_wide=wide, x_deep=deep, y_main=rows, y_aux=rows,
             x_test_wide=wide[:5], x_test_deep=deep[:5], y_test_main=rows[:5], y_test_aux=rows[:5])
    d = data.load(DataSpec(source=f"npz:{tmp_path / 'plain.npz'}"), seed=0)
    assert set(d.x_train) == {"wide", "deep"} and set(d.y_val) == {"main", "aux"}
    assert d.sizes["test"] == 5 and d.sizes["train"] + d.sizes["validation"] == N
    assert_aligned(d.x_train, d.y_train)

    np.savez(tmp_path / "split.npz", x_train_wide=wide, x_train_deep=deep, y_train=rows,
             x_test_wide=wide[:7], x_test_deep=deep[:7], y_test=rows[:7])
    d = data.load(DataSpec(source=f"npz:{tmp_path / 'split.npz'}"), seed=0)
    assert set(d.x_test) == {"wide", "deep"} and d.sizes["test"] == 7
    assert_aligned(d.x_val, [d.y_val])


def test_the_hash_covers_input_names(tmp_path):
    a = write_loader(tmp_path, "def load_data():\n    return {'wide': WIDE, 'deep': DEEP}, ROWS\n", "a.py")
    b = write_loader(tmp_path, "def load_data():\n    return {'wide': WIDE, 'other': DEEP}, ROWS\n", "b.py")
    ha = data.load(DataSpec(source=f"{a}:load_data"), seed=0).hash
    assert ha == data.load(DataSpec(source=f"{a}:load_data"), seed=0).hash
    assert ha != data.load(DataSpec(source=f"{b}:load_data"), seed=0).hash
