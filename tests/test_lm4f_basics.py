"""Device choice, seeding, the size switch, the training loop helper, serving and exercise checks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lm4f
from lm4f import checks, serving


def test_seed_everything_repeats_numpy_and_torch():
    lm4f.seed_everything(123)
    first = (np.random.rand(3), torch.rand(3))
    lm4f.seed_everything(123)
    second = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_choose_device_cpu_here_and_clear_error_for_missing_gpu(monkeypatch):
    monkeypatch.delenv("LM4F_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert lm4f.choose_device().type == expected  # never mps unless asked for
    monkeypatch.setenv("LM4F_DEVICE", "cpu")
    assert lm4f.choose_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            lm4f.choose_device("cuda")


def test_mps_is_opt_in_even_where_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LM4F_DEVICE", raising=False)
    assert lm4f.choose_device().type == "cpu"
    monkeypatch.setenv("LM4F_DEVICE", "mps")
    assert lm4f.choose_device().type == "mps"


def test_unknown_device_name_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("LM4F_DEVICE", "tpu")
    with pytest.raises(ValueError, match="cpu, cuda, mps"):
        lm4f.choose_device()


@pytest.mark.parametrize("size, expected", [("ci", "2 2"), ("full", "30 30"), ("smoke", "1 30"), (None, "2 2")])
def test_size_switch(size, expected):
    env = {k: v for k, v in os.environ.items() if k != "LM4F_SIZE"}
    if size:
        env["LM4F_SIZE"] = size
    code = "import lm4f; print(lm4f.pick(ci=2, full=30, smoke=1), lm4f.pick(ci=2, full=30))"
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert output.strip() == expected


def test_bad_size_value_is_refused_with_the_fix():
    env = dict(os.environ, LM4F_SIZE="huge")
    result = subprocess.run([sys.executable, "-c", "import lm4f"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "LM4F_SIZE must be one of ci, full, smoke" in result.stderr


def test_train_epochs_learns_a_linear_rule():
    lm4f.seed_everything(0)
    inputs = torch.randn(512, 4)
    targets = (inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=64, shuffle=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def evaluate(m):
        return {"accuracy": (m(inputs).argmax(1) == targets).float().mean().item()}

    history = lm4f.train_epochs(model, loader, torch.nn.functional.cross_entropy, optimizer, epochs=5,
                                evaluate=evaluate, progress=False)
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["accuracy"] > 0.95


def test_compare_passes_close_and_fails_wrong_with_hint(capsys):
    assert checks.check_close("same", np.ones(3), np.ones(3)) == 0.0
    assert "exact" in capsys.readouterr().out
    with pytest.raises(checks.ExerciseError, match="hint: flip the sign"):
        checks.check_close("sign", -np.ones(3), np.ones(3), hint="hint: flip the sign")
    with pytest.raises(checks.ExerciseError, match="shape"):
        checks.check_close("shape", np.ones(2), np.ones(3))
    with pytest.raises(checks.ExerciseError, match="returned None"):
        checks.check_close("none", None, np.ones(3))


def test_run_check_turns_stub_into_failed_verdict():
    def stub():
        raise NotImplementedError("Exercise 3.1: write the backward rule")

    with pytest.raises(checks.ExerciseError, match="Exercise 3.1"):
        checks.run_check("backward", stub, hint="use the chain rule")


def test_serving_starts_a_real_server_and_measures_latency():
    import httpx
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping():
        return {"ok": True}

    with serving.start(app) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/ping").json() == {"ok": True}
            stats = serving.measure_latency(lambda: client.get("/ping"), requests=20, warmup=2)
    assert stats["requests"] == 20 and 0 < stats["p50_ms"] <= stats["p95_ms"]
    assert not server.thread.is_alive()


def test_benchmark_runner_reports_failures(tmp_path):
    import importlib.util
    from pathlib import Path

    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_runner", runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "bench_good.py").write_text("def run():\n    return [{'metric': 'm', 'value': 1.5, 'unit': 'x'}]\n")
    (tmp_path / "bench_bad.py").write_text("def run():\n    raise RuntimeError('boom')\n")
    module.HERE = tmp_path
    module.OUTPUT = tmp_path / "results.json"
    assert module.main([]) == 1
    import json

    report = json.loads((tmp_path / "results.json").read_text())
    assert report["failed"] == ["bench_bad"]
    assert report["figures"] == [{"metric": "m", "value": 1.5, "unit": "x", "benchmark": "good"}]


def test_expect_near_accepts_rounding_and_names_what_moved():
    lm4f.expect_near("accuracy", 0.871, 0.865, tol=0.01)
    lm4f.expect_near("table", {"a": 0.5, "b": 0.61}, {"a": 0.51, "b": 0.6}, tol=0.02)
    lm4f.expect_near("curve", [1.0, 2.0], (1.01, 1.99), tol=0.02)
    with pytest.raises(AssertionError, match=r"table \[b\] = 0.7, stored 0.6"):
        lm4f.expect_near("table", {"a": 0.5, "b": 0.7}, {"a": 0.5, "b": 0.6}, tol=0.02)
    with pytest.raises(AssertionError, match="expected keys"):
        lm4f.expect_near("table", {"a": 0.5}, {"a": 0.5, "b": 0.6}, tol=0.02)
    with pytest.raises(AssertionError, match="expected 2 values"):
        lm4f.expect_near("curve", [1.0], [1.0, 2.0], tol=0.02)
    with pytest.raises(AssertionError):
        lm4f.expect_near("nan", float("nan"), 0.5, tol=0.1)


def test_expect_near_checks_only_at_the_ci_size_and_smoke_results_go_to_build():
    env = dict(os.environ, LM4F_SIZE="smoke")
    code = ("import lm4f; lm4f.expect_near('x', 0.0, 1.0, tol=0.1); "
            "print(lm4f.results_file('cv.json').relative_to(lm4f.utils.REPO_ROOT))")
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert output.strip() == "build/smoke/results/cv.json"
    assert lm4f.results_file("cv.json") == lm4f.utils.REPO_ROOT / "results" / "cv.json"
