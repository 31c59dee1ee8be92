"""Sample rows (the artifact's own, else generated) and the comparison that refuses a result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tenantserve.convert.base import Tolerance
from tenantserve.convert.proof import largest_difference, sample_rows
from tenantserve.errors import LoadFailed

TOL = Tolerance(atol=1e-5, rtol=1e-5)


def test_rows_come_from_sample_npy_first(tmp_path: Path) -> None:
    np.save(tmp_path / "sample.npy", np.arange(6, dtype=np.float64).reshape(3, 2))
    (tmp_path / "sample.csv").write_text("9,9\n")
    rows, source = sample_rows(tmp_path, 2)
    assert source == "sample.npy"
    assert rows.dtype == np.float32
    assert rows.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_rows_come_from_sample_csv_with_or_without_a_header(tmp_path: Path) -> None:
    (tmp_path / "sample.csv").write_text("a,b\n1,2\n3.5,4\n")
    rows, source = sample_rows(tmp_path, 2)
    assert (source, rows.tolist()) == ("sample.csv", [[1, 2], [3.5, 4]])
    (tmp_path / "sample.csv").write_text("1,2\n")
    assert sample_rows(tmp_path, 2)[0].tolist() == [[1, 2]]


def test_rows_are_generated_at_several_scales_when_the_artifact_has_none(tmp_path: Path) -> None:
    rows, source = sample_rows(tmp_path, 3)
    assert source == "201 generated rows"
    assert rows.shape == (201, 3)
    assert rows[0].tolist() == [0, 0, 0]
    assert np.abs(rows[1:41]).max() < 1 < np.abs(rows[-40:]).max() / 100
    assert np.array_equal(rows, sample_rows(tmp_path, 3)[0])  # seeded: the same every time


def test_a_sample_of_the_wrong_width_or_an_object_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "sample.npy", np.zeros((2, 5)))
    with pytest.raises(LoadFailed, match=r"sample.npy must be a numeric table of rows with 4"):
        sample_rows(tmp_path, 4)
    np.save(tmp_path / "sample.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LoadFailed, match=r"sample.npy is not a numeric \.npy array"):
        sample_rows(tmp_path, 4)  # refused, never unpickled
    (tmp_path / "sample.npy").unlink()
    (tmp_path / "sample.csv").write_text("1,2\n3,x\n")
    with pytest.raises(LoadFailed, match=r"sample.csv holds a value that is not a number"):
        sample_rows(tmp_path, 2)


def test_outputs_within_tolerance_pass_with_the_largest_difference() -> None:
    want = {"predictions": np.array([100.0, 2.0], dtype=np.float32)}
    got = {"predictions": np.array([100.0005, 2.0], dtype=np.float32)}
    assert largest_difference(want, got, TOL, "XGBoost") == pytest.approx(0.0005, rel=0.05)


def test_outputs_beyond_tolerance_are_refused_naming_the_largest_difference() -> None:
    want = {"probabilities": np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float32)}
    got = {"probabilities": np.array([[0.5, 0.5], [0.87, 0.13]], dtype=np.float32)}
    with pytest.raises(LoadFailed) as caught:
        largest_difference(want, got, TOL, "LightGBM")
    message = str(caught.value)
    assert "differs from LightGBM's by up to 0.03" in message
    assert "row 1" in message
    assert "tolerance 1e-05 + 1e-05 x |value|" in message


def test_labels_must_match_except_where_the_original_is_a_tie() -> None:
    scores = np.array([[0.5, 0.5], [0.2, 0.8]], dtype=np.float32)
    want = {"label": np.array([0, 1]), "probabilities": scores}
    tie_flipped = {"label": np.array([1, 1]), "probabilities": scores}
    assert largest_difference(want, tie_flipped, TOL, "scikit-learn") == 0.0
    wrong = {"label": np.array([0, 0]), "probabilities": scores}
    with pytest.raises(LoadFailed, match=r"1 of 2 labels differ .* row 1"):
        largest_difference(want, wrong, TOL, "scikit-learn")


def test_a_missing_or_misshapen_output_is_refused() -> None:
    want = {"predictions": np.zeros(3, dtype=np.float32)}
    with pytest.raises(LoadFailed, match=r"output 'predictions' has shape \[3, 1\]"):
        largest_difference(want, {"predictions": np.zeros((3, 1))}, TOL, "XGBoost")
