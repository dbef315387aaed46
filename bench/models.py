"""Train the benchmark's two models once and save them in every server's format.

    iris  LogisticRegression on the iris data set (4 features, 3 classes): serving overhead
          dominates a one-row request.
    rf    RandomForestClassifier(n_estimators=100) on make_classification(20 features,
          random_state=0): predict dominates.

Written to bench/.artifacts/ (ignored by git):
    <name>.joblib                         the one file Modelhost (upload), MLServer and the floor load
    mlserver/<name>/model-settings.json   MLServer's sklearn runtime, pointing at <name>.joblib's copy
    mlflow/<name>/                        `mlflow.sklearn.save_model` folder for `mlflow models serve`
    <name>.rows.json                      a pool of real input rows for the load generator

Run with the peers' venv (it has mlflow): bench/.venv-peers/bin/python bench/models.py.
Idempotent: does nothing when the files exist and were made from the same scikit-learn.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

ARTIFACTS = Path(__file__).resolve().parent / ".artifacts"
NAMES = ("iris", "rf")
POOL_ROWS = 1000


def _train(name: str):
    if name == "iris":
        x, y = load_iris(return_X_y=True)
        return LogisticRegression(max_iter=1000).fit(x, y), x
    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
    return RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y), x


def _pool(x: np.ndarray) -> list[list[float]]:
    rng = np.random.default_rng(0)
    rows = x[rng.integers(0, len(x), size=POOL_ROWS)]
    return [[round(float(v), 4) for v in row] for row in rows]


def build(*, force: bool = False) -> Path:
    stamp = ARTIFACTS / "stamp.json"
    want = {"sklearn": sklearn.__version__, "numpy": np.__version__, "names": list(NAMES)}
    if not force and stamp.exists() and json.loads(stamp.read_text()) == want:
        return ARTIFACTS
    import mlflow.sklearn
    from mlflow.models import infer_signature

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        model, x = _train(name)
        joblib_path = ARTIFACTS / f"{name}.joblib"
        joblib.dump(model, joblib_path)
        (ARTIFACTS / f"{name}.rows.json").write_text(json.dumps(_pool(x)))

        mlserver_dir = ARTIFACTS / "mlserver" / name
        shutil.rmtree(mlserver_dir, ignore_errors=True)
        mlserver_dir.mkdir(parents=True)
        shutil.copy(joblib_path, mlserver_dir / "model.joblib")
        (mlserver_dir / "model-settings.json").write_text(
            json.dumps(
                {"name": name, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}},
                indent=2,
            )
        )

        mlflow_dir = ARTIFACTS / "mlflow" / name
        shutil.rmtree(mlflow_dir, ignore_errors=True)
        # mlflow 3 saves with skops by default; the tree node storage is a type we made ourselves.
        mlflow.sklearn.save_model(
            model,
            str(mlflow_dir),
            signature=infer_signature(x[:5], model.predict(x[:5])),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    stamp.write_text(json.dumps(want))
    return ARTIFACTS


if __name__ == "__main__":
    print(build(force="--force" in sys.argv))
