"""``python -m lm4f.train CASE``: trains outside the notebook, saves a version, and the serve command serves it.

Run under ``LM4F_SIZE=smoke`` (the full-size code path on a tiny slice, seconds per case) into a
temporary folder. The assistant's training (four minutes at the CI size) is not run here; its saved
form is tested through ``lm4f.train.save_assistant`` in ``tests/test_serve.py``.
"""

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from lm4f import serve
from lm4f.saved_models import open_model

REQUESTS = {
    "reviews": ("/classify", {"text": "The fabric is lovely and it fits well."}),
    "images": ("/predict", {"pixels": [[0] * 28] * 28}),
    "movies": ("/recommend", {"history": [50, 172, 181], "k": 5}),
    "generate": ("/generate", {"class": "Sneaker", "n": 2, "seed": 1}),
}
METRICS = {"reviews": {"accuracy", "macro_f1", "threshold"}, "images": {"accuracy", "validation_accuracy"},
           "movies": {"HR@10", "NDCG@10", "popularity_HR@10"}, "generate": {"d_real", "d_fake", "spread"}}


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_the_train_command_saves_a_version_that_the_serve_command_serves(case, tmp_path):
    env = {**os.environ, "LM4F_SIZE": "smoke", "OMP_NUM_THREADS": "1", "LM4F_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "lm4f.train", case, "--models", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"saved {case} v1 -> {tmp_path / case / 'v1'}" in run.stdout
    saved = open_model(tmp_path / case, case)
    assert saved.version == "v1" and saved.metadata["size"] == "smoke"
    assert saved.metadata["rebuild"] == f"LM4F_SIZE=smoke python -m lm4f.train {case} --models {tmp_path}"
    assert set(saved.metadata["metrics"]) >= METRICS[case] | {"split"} and saved.metadata["data"]
    assert saved.metadata["training"]["seconds"] > 0
    app, _ = serve.app_from_argv([case, "--model", str(tmp_path / case)])
    route, body = REQUESTS[case]
    with TestClient(app) as client:
        assert client.post(route, json=body).status_code == 200


def test_an_unknown_case_is_refused_with_the_list():
    run = subprocess.run([sys.executable, "-m", "lm4f.train", "films"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "invalid choice: 'films'" in run.stderr and "assistant" in run.stderr
