"""skops files: loaded only with trusted types; anything else refused before it is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris

from tenantserve.convert.run import convert_artifact
from tenantserve.convert.sklearn_skops import CONVERTER
from tenantserve.errors import LoadFailed


class Smuggled(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A class from outside scikit-learn: its module would be imported to rebuild it."""

    def fit(self, x: object, y: object) -> Smuggled:
        self.n_features_in_ = 4
        return self


def test_a_type_outside_the_trusted_list_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "sklearn.skops"
    sio.dump(Smuggled().fit(None, None), path)
    with pytest.raises(LoadFailed, match=r"names types tenantserve does not trust: .*Smuggled"):
        CONVERTER.open(path)


def test_a_file_that_is_not_skops_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sklearn.skops"
    path.write_bytes(b"\x80\x04not a zip")  # a pickle's first bytes: never unpickled
    with pytest.raises(LoadFailed, match=r"sklearn.skops is not a skops file"):
        CONVERTER.open(path)


def test_an_estimator_that_is_neither_classifier_nor_regressor_is_refused(tmp_path: Path) -> None:
    x, _ = load_iris(return_X_y=True)
    sio.dump(KMeans(n_clusters=2, n_init=1, random_state=0).fit(x), tmp_path / "sklearn.skops")
    with pytest.raises(LoadFailed, match="KMeans is neither a classifier nor a regressor"):
        CONVERTER.open(tmp_path / "sklearn.skops")


def test_a_forest_needs_the_trusted_tree_type_and_converts(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y)
    sio.dump(forest, tmp_path / "sklearn.skops")
    assert sio.get_untrusted_types(file=tmp_path / "sklearn.skops") == ["sklearn.tree._tree.Tree"]
    conversion = convert_artifact(tmp_path, "sklearn.skops")
    assert (conversion.framework, conversion.kind, conversion.n_features) == (
        "scikit-learn",
        "classifier",
        4,
    )
    assert conversion.max_difference <= 1e-4
    assert np.isfinite(conversion.max_difference)


def test_string_classes_serve_as_text_labels_with_a_declared_width(tmp_path: Path) -> None:
    import onnxruntime as ort
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    sio.dump(DecisionTreeClassifier(max_depth=3).fit(x, names), tmp_path / "sklearn.skops")
    session = ort.InferenceSession(convert_artifact(tmp_path, "sklearn.skops").onnx)
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert outputs == {
        "label": ("tensor(string)", ["N"]),
        "probabilities": ("tensor(float)", ["N", 3]),
    }
    label, _ = session.run(None, {"input": x[:2].astype(np.float32)})
    assert label.tolist() == ["setosa", "setosa"]
