"""`from modelhost import Client` against a live platform: the notebook path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelhost import ApiError, Client, NotLoggedIn
from registry.tests import factories as f

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_deploy_an_in_memory_estimator_and_predict_a_dataframe(live_platform, tenant):
    frame = pd.DataFrame([f.IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], columns=f.IRIS_FEATURES)
    estimator = f.iris_frame_model()
    with Client(live_platform.url, api_key=tenant.api_key) as client:
        version = client.deploy(
            estimator, name="iris", promote=True, example=frame.head(1), metrics={"accuracy": np.float64(0.97)}
        )
        assert (version["number"], version["stage"], version["format"]) == (1, "production", "joblib")
        assert version["feature_names"] == f.IRIS_FEATURES
        assert version["metrics"] == {"accuracy": 0.97}

        predictions = client.predict("iris", frame)
        assert isinstance(predictions, np.ndarray)
        assert predictions.tolist() == estimator.predict(frame).tolist()
        np.testing.assert_allclose(client.predict_proba("iris", frame.to_numpy()), estimator.predict_proba(frame))
        assert client.models()[0]["production_version"] == 1


def test_a_missing_value_in_a_dataframe_is_sent_as_null_and_named_by_the_platform(live_platform, tenant):
    frame = pd.DataFrame([[5.1, np.nan, 1.4, 0.2]], columns=f.IRIS_FEATURES)
    with Client(live_platform.url, api_key=tenant.api_key) as client:
        client.deploy(f.iris_frame_model(), name="iris", promote=True, serializer="skops")
        with pytest.raises(ApiError) as caught:
            client.predict("iris", frame)
    assert (caught.value.status, caught.value.code, caught.value.exit_code) == (400, "invalid_input", 5)
    assert caught.value.errors[0]["row"] == 0 and caught.value.errors[0]["column"] == "sepal_width"


def test_no_url_anywhere_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELHOST_URL", raising=False)
    monkeypatch.setenv("MODELHOST_CONFIG_DIR", str(tmp_path))
    with pytest.raises(NotLoggedIn, match="run `modelhost login` or set MODELHOST_URL"):
        Client()
