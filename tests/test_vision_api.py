"""The product-image classifier of case study 6.3: preprocessing, export, and the HTTP API served by
a real uvicorn server and called with httpx (lm4f.apps.vision, lm4f.vision)."""

import io

import httpx
import numpy as np
import pytest
import torch

import lm4f
import lm4f.serving
from lm4f import data, vision
from lm4f.apps.vision import create_app


@pytest.fixture(scope="module")
def fashion():
    train_u8, train_labels = data.fashion_mnist("train")
    test_u8, test_labels = data.fashion_mnist("test")
    return train_u8[:6000], train_labels[:6000], test_u8[:300], test_labels[:300]


@pytest.fixture(scope="module")
def served(fashion, tmp_path_factory):
    """A softmax-regression model trained for a few seconds, exported, reloaded and served."""
    train_u8, train_labels, _, _ = fashion
    lm4f.seed_everything(0)
    model = vision.softmax_regression()
    vision.fit(model, vision.to_tensor(train_u8), torch.from_numpy(train_labels), epochs=1, lr=1e-2)
    path = tmp_path_factory.mktemp("model") / "classifier.pt2"
    vision.export_model(model, path)
    server = lm4f.serving.start(create_app(vision.load_model(path)))
    client = httpx.Client(base_url=server.url, timeout=30)
    yield client
    client.close()
    server.stop()


def test_to_tensor_normalises_and_rejects_wrong_shapes():
    images = np.full((3, 28, 28), 255, dtype=np.uint8)
    batch = vision.to_tensor(images)
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == torch.float32
    assert torch.allclose(batch, torch.full_like(batch, (1 - vision.MEAN) / vision.STD))
    assert vision.to_tensor(images[0]).shape == (1, 1, 28, 28)
    with pytest.raises(vision.ImageError, match=r"\(N, 28, 28\)"):
        vision.to_tensor(np.zeros((2, 32, 32), dtype=np.uint8))


def test_augment_flips_and_shifts_without_changing_shape():
    batch = torch.zeros(64, 1, 28, 28)
    batch[:, :, :, :5] = 1.0  # a bright left edge
    out = vision.augment(batch, torch.Generator().manual_seed(0), flip=True, shift=0)
    assert out.shape == batch.shape
    mirrored = out[:, 0, 0, -1] == 1.0
    assert 10 < int(mirrored.sum()) < 54  # about half the images are mirrored
    shifted = vision.augment(batch[:1], torch.Generator().manual_seed(3), flip=False, shift=2)
    assert shifted.shape == (1, 1, 28, 28)


@pytest.mark.parametrize("model_fn", [vision.softmax_regression, vision.mlp, vision.ProductCNN, vision.SmallResNet,
                                      lambda: vision.SmallResNet((16, 32, 64), blocks=2, pool_stem=False)])
def test_models_map_images_to_ten_logits(model_fn):
    model = model_fn().eval()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("model_fn", [vision.ProductCNN, vision.SmallResNet])
def test_channels_last_layout_changes_neither_values_nor_saved_weights(model_fn):
    torch.manual_seed(0)
    model = model_fn().eval()
    images = torch.randn(4, 1, 28, 28)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last) if hasattr(model, "features") \
        else model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        default_layout = model(images)
        channels_last = model(vision.to_channels_last(images))
    assert torch.allclose(default_layout, channels_last, atol=1e-5)
    reloaded = model_fn().eval()
    reloaded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(reloaded(images), default_layout)


def test_a_few_seconds_of_training_learn_something(fashion):
    train_u8, train_labels, test_u8, test_labels = fashion
    lm4f.seed_everything(0)
    model = vision.ProductCNN()
    history = vision.fit(model, vision.to_tensor(train_u8[:2000]), torch.from_numpy(train_labels[:2000]),
                         epochs=1, batch_size=128, use_augmentation=True)
    assert len(history) == 1 and history[0]["train_loss"] < 2.3
    assert vision.accuracy(model, vision.to_tensor(test_u8), torch.from_numpy(test_labels)) > 0.5


def test_fit_rejects_unprepared_images():
    with pytest.raises(ValueError, match="to_tensor"):
        vision.fit(vision.mlp(), torch.zeros(8, 28, 28), torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("model_fn", [vision.SmallResNet, vision.ProductCNN])
def test_export_reloads_with_identical_outputs_for_any_batch_size(model_fn, fashion, tmp_path):
    _, _, test_u8, _ = fashion
    lm4f.seed_everything(0)
    model = model_fn().eval()
    path = tmp_path / "model.pt2"
    vision.export_model(model, path)
    reloaded = vision.load_model(path)
    for batch in (1, 7, 64):
        images = vision.to_tensor(test_u8[:batch])
        with torch.no_grad():
            expected, got = model(images), reloaded(images)
        assert got.shape == (batch, 10)
        assert torch.equal(expected, got)
    # exporting works on a copy: the model in memory keeps its eval mode and channels-last weights
    assert model.training is False
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)


def test_loading_a_missing_or_broken_export_says_how_to_fix_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_model"):
        vision.load_model(tmp_path / "absent.pt2")
    path = tmp_path / "model.pt2"
    vision.export_model(vision.softmax_regression(), path)
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(path.read_bytes()[:1000])  # a download cut short
    with pytest.raises(ValueError, match="export it again"):
        vision.load_model(broken)
    (tmp_path / "notes.pt2").write_text("not a model")
    with pytest.raises(ValueError, match="not a model saved by lm4f.vision.export_model"):
        vision.load_model(tmp_path / "notes.pt2")


def test_png_round_trip_and_decoding_errors():
    pixels = np.arange(784, dtype=np.int64).reshape(28, 28) % 256
    assert np.array_equal(vision.decode_png(vision.encode_png(pixels)), pixels)
    with pytest.raises(vision.ImageError, match="not a PNG"):
        vision.decode_png(b"GIF89a....")
    with pytest.raises(vision.ImageError, match="corrupt"):
        vision.decode_png(vision.encode_png(pixels)[:30])
    with pytest.raises(vision.ImageError, match="resize it to 28x28"):
        vision.decode_png(vision.encode_png(np.zeros((20, 30))))


def test_json_and_png_routes_agree_and_are_accurate(served, fashion):
    _, _, test_u8, test_labels = fashion
    assert served.get("/health").json()["classes"] == vision.CLASSES
    right = 0
    for image, label in zip(test_u8[:60], test_labels[:60]):
        by_json = served.post("/predict", json={"pixels": image.tolist()})
        assert by_json.status_code == 200
        body = by_json.json()
        assert set(body["probabilities"]) == set(vision.CLASSES)
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
        assert body["label"] == vision.CLASSES[body["class_index"]]
        right += body["class_index"] == label
    assert right / 60 > 0.6  # a softmax regression trained for seconds: well above chance (0.1)
    by_png = served.post("/predict/png", files={"file": ("x.png", vision.encode_png(test_u8[0]), "image/png")})
    assert by_png.status_code == 200
    assert by_png.json() == served.post("/predict", json={"pixels": test_u8[0].tolist()}).json()


def test_colour_png_is_accepted_as_grey(served, fashion):
    from PIL import Image

    _, _, test_u8, _ = fashion
    buffer = io.BytesIO()
    Image.fromarray(np.stack([test_u8[1]] * 3, axis=-1), mode="RGB").save(buffer, format="PNG")
    response = served.post("/predict/png", files={"file": ("rgb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200
    assert response.json() == served.post("/predict", json={"pixels": test_u8[1].tolist()}).json()


@pytest.mark.parametrize("send, status, message", [
    (lambda c: c.post("/predict", json={"pixels": [[0] * 20] * 20}), 422, "28 rows of 28"),
    (lambda c: c.post("/predict", json={"pixels": [[0] * 28] * 27 + [[0] * 5]}), 422, "28 rows of 28"),
    (lambda c: c.post("/predict", json={"pixels": [[300] * 28] * 28}), 422, "0 to 255"),
    (lambda c: c.post("/predict", json={"pixels": "an image"}), 422, "list"),
    (lambda c: c.post("/predict", json={}), 422, "Field required"),
    (lambda c: c.post("/predict/png", files={"file": ("a.jpg", b"\xff\xd8\xff\xe0 jpeg bytes", "image/jpeg")}),
     415, "not a PNG"),
    (lambda c: c.post("/predict/png", files={"file": ("cut.png", vision.encode_png(np.zeros((28, 28)))[:40],
                                                      "image/png")}),
     400, "corrupt"),
    (lambda c: c.post("/predict/png", files={"file": ("big.png", vision.encode_png(np.zeros((64, 64))), "image/png")}),
     422, "resize it to 28x28"),
    (lambda c: c.post("/predict/png", files={"file": ("e.png", b"", "image/png")}), 415, "not a PNG"),
    (lambda c: c.post("/predict/png", data={"nofile": "1"}), 422, "Field required"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(served, send, status, message):
    response = send(served)
    assert response.status_code == status, response.text
    assert message in response.text


def test_latency_is_measured_over_http(served, fashion):
    _, _, test_u8, _ = fashion
    payload = {"pixels": test_u8[2].tolist()}
    stats = lm4f.serving.measure_latency(lambda: served.post("/predict", json=payload), requests=20, warmup=2)
    assert stats["requests"] == 20
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] < 5000
