"""Case study 6.3: test accuracy reached vs training wall time, and the HTTP API's latency.

The CI size trains the small ResNet on 12,000 Fashion-MNIST images for 3 epochs on the CPU;
LM4F_SIZE=full trains the wider GPU ResNet on all 54,000 for 20 epochs with augmentation.
"""

import time

import httpx
import numpy as np
import torch

import lm4f
import lm4f.serving
from lm4f import data, vision
from lm4f.apps.vision import create_app


def run():
    lm4f.seed_everything(0)
    device = lm4f.choose_device()
    train_u8, train_labels = data.fashion_mnist("train")
    test_u8, test_labels = data.fashion_mnist("test")
    images = lm4f.pick(ci=12_000, full=54_000)
    epochs = lm4f.pick(ci=3, full=20)
    train_x = vision.to_tensor(train_u8[:images]).to(device)
    train_y = torch.from_numpy(train_labels[:images]).to(device)
    test_x, test_y = vision.to_tensor(test_u8), torch.from_numpy(test_labels)
    model = lm4f.pick(ci=vision.SmallResNet(), full=vision.SmallResNet((64, 128, 256), blocks=2, pool_stem=False))
    started = time.perf_counter()
    context = {"device": str(device), "train_images": images, "model": type(model).__name__,
               "params": vision.parameter_count(model)}
    figures = []

    def evaluate(trained):
        return {"test_accuracy": vision.accuracy(trained, test_x, test_y),
                "wall_s": time.perf_counter() - started}

    history = vision.fit(model, train_x, train_y, epochs=epochs, batch_size=lm4f.pick(ci=256, full=512),
                         lr=lm4f.pick(ci=4e-3, full=3e-3), use_augmentation=lm4f.FULL_SIZE,
                         label_smoothing=lm4f.pick(ci=0.0, full=0.1), evaluate=evaluate)
    for row in history:
        figures.append({"metric": f"test accuracy after epoch {row['epoch']}", "value": round(row["test_accuracy"], 4),
                        "unit": f"fraction (at {row['wall_s']:.0f} s wall)", "wall_s": round(row["wall_s"], 1), **context})
    model.cpu().eval()
    images_per_second = images * epochs / history[-1]["wall_s"]
    figures.append({"metric": "training throughput", "value": round(images_per_second), "unit": "images/s", **context})

    payload = {"pixels": test_u8[0].tolist()}
    png = vision.encode_png(test_u8[0])
    with lm4f.serving.start(create_app(model)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for route, send in (("POST /predict (JSON)", lambda: client.post("/predict", json=payload)),
                            ("POST /predict/png", lambda: client.post("/predict/png", files={"file": ("x.png", png, "image/png")}))):
            stats = lm4f.serving.measure_latency(send, requests=lm4f.pick(ci=100, full=500))
            for key in ("p50_ms", "p95_ms"):
                figures.append({"metric": f"{route} latency {key[:3]}", "value": round(stats[key], 2), "unit": "ms",
                                "requests": stats["requests"], **context})
    return figures
