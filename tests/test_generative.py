"""Chapter 2.3: the GAN, the diffusion model, the measurements and the /generate service (lm4f.generative)."""

import base64
import io
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lm4f import generative as gen
from lm4f.apps.generate import MAX_IMAGES, create_app
from lm4f.saved_models import ModelFileError


def _fake_data(n=256, seed=0):
    """Images (n, 1, 28, 28) in [-1, 1]: class c is a bright horizontal band at rows 2c..2c+7, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    pixels = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        pixels[i, 2 * c:2 * c + 8, 4:24] = 220
    return gen.to_unit(pixels), torch.from_numpy(labels.astype(np.int64)), pixels


def test_pixels_round_trip_and_class_names():
    pixels = np.arange(784, dtype=np.int64).reshape(1, 28, 28) % 256
    unit = gen.to_unit(pixels.astype(np.uint8))
    assert unit.shape == (1, 1, 28, 28) and unit.min() == -1.0 and unit.max() == 1.0
    assert np.array_equal(gen.to_uint8(unit), pixels.astype(np.uint8))
    assert gen.to_uint8(torch.full((1, 1, 28, 28), 5.0)).max() == 255  # clipped, not wrapped
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        gen.to_unit(np.zeros((28, 28), np.uint8))
    assert gen.class_index(" sneaker ") == 7 and gen.class_index("Ankle boot") == 9
    with pytest.raises(ValueError, match="Spaceship.*Sneaker"):
        gen.class_index("Spaceship")


def test_gan_shapes_losses_and_the_mode_seeking_spread():
    G, D = gen.Generator(width=16), gen.Discriminator(width=16)
    labels = torch.tensor([0, 7, 9])
    images = G(torch.randn(3, gen.LATENT), labels)
    assert images.shape == (3, 1, 28, 28) and images.abs().max() <= 1.0
    assert D(images, labels).shape == (3,)
    assert torch.equal(G.sample(labels, seed=3), G.sample(labels, seed=3))
    assert not torch.equal(G.sample(labels, seed=3), G.sample(labels, seed=4))
    # eval-mode output depends only on the image's own z (GroupNorm, not BatchNorm)
    first = G.sample(torch.tensor([7]), seed=5)
    assert torch.allclose(G.sample(torch.tensor([7, 0, 1]), seed=5)[:1], first, atol=1e-6)
    X, Y, _ = _fake_data()
    for loss in ("non_saturating", "minimax"):
        G, D, history = gen.train_gan(X, Y, steps=6, batch_size=16, width=16, loss=loss, mode_seeking=1.0,
                                      log_every=3)
        assert [row["step"] for row in history] == [3, 6] and not G.training
        assert {"d_loss", "g_loss", "d_real", "d_fake", "spread", "seconds"} <= set(history[0])
        assert all(0 <= row["d_real"] <= 1 and row["spread"] > 0 for row in history)
    with pytest.raises(ValueError, match="loss must be one of"):
        gen.train_gan(X, Y, steps=1, loss="wasserstein")


def test_the_forward_process_and_sampling():
    diffusion = gen.Diffusion(gen.Denoiser(width=8), steps=100)
    assert torch.all(diffusion.alpha_bar[1:] < diffusion.alpha_bar[:-1])  # less of the image at every step
    x0, noise = torch.ones(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    early = diffusion.noise_images(x0, torch.tensor([0, 0]), noise)
    late = diffusion.noise_images(x0, torch.tensor([99, 99]), noise)
    assert (early - x0).abs().max() < 0.05  # step 0: the image, barely touched
    a = diffusion.alpha_bar[99]
    assert torch.allclose(late, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    labels = torch.tensor([1, 8])
    sample = diffusion.sample(labels, sampling_steps=5, seed=1)
    assert sample.shape == (2, 1, 28, 28) and sample.abs().max() <= 1.0
    assert torch.equal(sample, diffusion.sample(labels, sampling_steps=5, seed=1))  # eta 0: deterministic
    assert not torch.equal(sample, diffusion.sample(labels, sampling_steps=5, seed=1, guidance=0.0))
    with pytest.raises(ValueError, match="sampling_steps"):
        diffusion.sample(labels, sampling_steps=0)


def test_diffusion_training_lowers_the_noise_prediction_loss():
    X, Y, _ = _fake_data(512)
    diffusion, history = gen.train_diffusion(X, Y, steps=60, batch_size=32, width=8, log_every=20, lr=3e-3)
    losses = [row["loss"] for row in history]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0]
    assert not diffusion.model.training


def test_frechet_distance_matches_its_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert gen.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + np.array([3.0, 0.0, 0.0, 4.0])  # same covariance: the distance is |shift|^2 = 25
    assert gen.frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-9)
    scaled = a * 2.0  # means m and 2m, covariances C and 4C: |m|^2 + trace(C + 4C - 2 * 2C) = |m|^2 + trace(C)
    expected = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert gen.frechet_distance(a, scaled) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="two feature sets"):
        gen.frechet_distance(a, a[:, :3])


def test_frechet_intervals_rank_sets_and_report_paired_differences():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 3))
    sets = {"close": rng.normal(size=(300, 3)) + 0.1, "far": rng.normal(size=(300, 3)) + 2.0}
    result = gen.frechet_intervals(reference, sets, resamples=50, seed=0)
    assert result["close"]["value"] < result["far"]["value"]
    gap = result["differences"][("close", "far")]
    assert gap["value"] == pytest.approx(result["close"]["value"] - result["far"]["value"])
    assert gap["low"] <= gap["high"] < 0  # clearly closer


def test_nearest_distances_find_copies():
    _, _, pixels = _fake_data(50)
    distances = gen.nearest_distances(pixels[:5], pixels)
    assert np.allclose(distances, 0.0, atol=1e-2)
    moved = np.clip(pixels[:5].astype(int) + 10, 0, 255).astype(np.uint8)
    assert np.all(gen.nearest_distances(moved, pixels[5:]) > 1.0)


def test_features_come_from_the_classifiers_hidden_layer():
    from lm4f.vision import ProductCNN

    classifier = ProductCNN(hidden=32)
    X, _, _ = _fake_data(20)
    values = gen.features(classifier, X, batch_size=7)
    assert values.shape == (20, 32) and values.min() >= 0.0  # ReLU outputs
    assert not classifier.training


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_save_and_load_check_every_file(tmp_path, kind):
    model = gen.Generator(width=8) if kind == "gan" else gen.Diffusion(gen.Denoiser(width=8), steps=50)
    saved = gen.save_generator(model, settings={"sampling_steps": 5}, metrics={"frechet_distance": 1.0}, root=tmp_path)
    assert saved.folder == tmp_path / "generate" / "v1" and saved.metadata["metrics"] == {"frechet_distance": 1.0}
    loaded, opened = gen.load_generator(tmp_path / "generate")  # the newest version
    assert opened.config["kind"] == kind and opened.config["settings"] == {"sampling_steps": 5}
    labels = torch.tensor([3, 4])
    if kind == "gan":
        assert torch.equal(loaded.sample(labels, seed=2), model.sample(labels, seed=2))
    else:
        assert torch.equal(loaded.sample(labels, sampling_steps=3, seed=2),
                           model.sample(labels, sampling_steps=3, seed=2))
    weights = saved.folder / gen.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    rebuild = r"(?s)weights\.pt is corrupt or truncated.*python -m lm4f\.train generate"
    with pytest.raises(ModelFileError, match=rebuild):
        gen.load_generator(saved.folder)
    with pytest.raises(ModelFileError, match="no folder"):
        gen.load_generator(tmp_path / "nothing")
    with pytest.raises(TypeError, match="Generator or a Diffusion"):
        gen.save_generator(torch.nn.Linear(2, 2), root=tmp_path)


def _decode(image):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image))))


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_generate_endpoint(kind):
    torch.manual_seed(0)
    model = gen.Generator(width=8) if kind == "gan" else gen.Diffusion(gen.Denoiser(width=8), steps=50)
    with TestClient(create_app(model, sampling_steps=3)) as client:
        reply = client.post("/generate", json={"class": "sneaker", "n": 3, "seed": 1})
        assert reply.status_code == 200
        body = reply.json()
        assert body["class"] == "Sneaker" and body["n"] == 3 and body["model"] == kind
        images = [_decode(image) for image in body["images"]]
        assert len(images) == 3 and all(image.shape == (28, 28) and image.dtype == np.uint8 for image in images)
        assert client.post("/generate", json={"class": "Sneaker", "n": 3, "seed": 1}).json()["images"] == body["images"]
        assert client.post("/generate", json={"class": "Sneaker", "n": 3, "seed": 2}).json()["images"] != body["images"]
        unknown = client.post("/generate", json={"class": "Spaceship"})
        assert unknown.status_code == 422 and "Ankle boot" in unknown.json()["detail"]
        too_many = client.post("/generate", json={"class": "Bag", "n": MAX_IMAGES + 1})
        assert too_many.status_code == 422 and str(MAX_IMAGES) in too_many.json()["detail"]
        assert client.post("/generate", json={"class": "Bag", "n": "4"}).status_code == 422  # strict types
        huge = client.post("/generate", content=b"{" + b" " * 10_000 + b"}",
                           headers={"content-type": "application/json"})
        assert huge.status_code == 413
        assert client.get("/health").json()["model"] == kind
        for _ in range(100):  # the warm-up runs in a background thread
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/ready").json()["status"] == "ready"
        assert 'lm4f_http_requests_total{' in client.get("/metrics").text
    with pytest.raises(TypeError, match="Generator or Diffusion"):
        create_app(torch.nn.Linear(2, 2))
