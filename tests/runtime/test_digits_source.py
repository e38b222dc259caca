"""The built-in "digits" source reads scikit-learn's bundled table without importing sklearn."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dslc.runtime import data

REPO = Path(__file__).resolve().parents[2]


def test_digits_arrays_are_sklearns_load_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, target = data._digits_arrays()
    assert images.dtype == digits.images.dtype and target.dtype == digits.target.dtype
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)


def test_loading_digits_does_not_import_sklearn():
    # Fails when a scikit-learn release moves its table: DIGITS_CSV then needs updating.
    code = ("import sys; from dslc.runtime.data import load_dataset; "
            "load_dataset('digits', x_shape=(1, 8, 8), x_dtype='float32', y_shape=(), y_dtype='int64'); "
            "print('sklearn' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_digits_fall_back_to_sklearns_loader_when_the_table_moves(monkeypatch):
    expected_images, expected_target = data._digits_arrays()
    monkeypatch.setattr(data, "DIGITS_CSV", ("datasets", "data", "no-such-file.csv.gz"))
    images, target = data._digits_arrays()
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(target, expected_target)
