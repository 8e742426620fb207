"""HTTP API of the product-image generator (chapter 2.3).

    model, saved = lm4f.generative.load_generator("models/generate")   # the newest saved version
    server = lm4f.serving.start(create_app(model, about=saved.about(), settings=saved.config["settings"]))
    httpx.post(server.url + "/generate", json={"class": "Sneaker", "n": 4, "seed": 1})

``POST /generate`` answers ``{"class", "n", "seed", "model", "images": [base64 PNG, ...]}``: ``n``
28x28 greyscale PNGs of the requested Fashion-MNIST class, the same ones for the same seed.
``model`` is a ``lm4f.generative.Generator`` (a GAN: one forward pass) or a
``lm4f.generative.Diffusion`` (``sampling_steps`` denoising passes). An unknown class gets a 422
that lists the classes; ``n`` above ``MAX_IMAGES`` a 422 that says the limit. Health, readiness,
metrics, the request log, the body limit and the error schema come from ``lm4f.apps.service``.
"""

from __future__ import annotations

import base64

import torch
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lm4f import generative
from lm4f.apps.service import create_service
from lm4f.vision import encode_png

MAX_IMAGES = 16  # a diffusion model's cost grows with n; more per request would let one caller hog the CPU
MAX_BODY_BYTES = 4 * 1024
EXAMPLES = {"/generate": '{"class": "Sneaker", "n": 4, "seed": 1}'}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    class_name: str = Field(..., alias="class", max_length=40, strict=True,
                            description=f"one of {generative.CLASSES} (case does not matter)")
    n: int = Field(default=4, ge=1, le=MAX_IMAGES, strict=True, description=f"images to make, 1 to {MAX_IMAGES}")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, strict=True, description="the same seed gives the same images")

    @field_validator("class_name")
    @classmethod
    def known_class(cls, value: str) -> str:
        return generative.CLASSES[generative.class_index(value)]  # ValueError names the classes


class GenerateResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_name: str = Field(..., alias="class")
    n: int
    seed: int
    model: str = Field(description="gan or diffusion")
    images: list[str] = Field(description="base64-encoded 28x28 greyscale PNG files")


def create_app(model, about: dict | None = None, settings: dict | None = None, sampling_steps: int | None = None,
               guidance: float | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the app around a ``Generator`` or a ``Diffusion``; ``about`` (e.g. ``SavedModel.about()``) is
    what ``/ready`` reports; ``sampling_steps`` and ``guidance`` apply to a diffusion model (default:
    ``settings``, the saved model's, else 25 steps and guidance 2)."""
    settings = settings or {}
    if isinstance(model, generative.Generator):
        kind = "gan"
        model.eval()
    elif isinstance(model, generative.Diffusion):
        kind = "diffusion"
        sampling_steps = sampling_steps or settings.get("sampling_steps", 25)
        guidance = guidance if guidance is not None else settings.get("guidance", 2.0)
    else:
        raise TypeError(f"expected a lm4f.generative.Generator or Diffusion, got {type(model).__name__}")

    def make(class_name: str, n: int, seed: int) -> list[str]:
        labels = torch.full((n,), generative.class_index(class_name), dtype=torch.long)
        with torch.no_grad():
            if kind == "gan":
                images = model.sample(labels, seed=seed)
            else:
                images = model.sample(labels, sampling_steps=sampling_steps, guidance=guidance, seed=seed)
        return [base64.b64encode(encode_png(pixels)).decode("ascii") for pixels in generative.to_uint8(images)]

    app = create_service(
        "Product image generator", description="28x28 greyscale Fashion-MNIST-style product images of a class.",
        max_body_bytes=max_body_bytes, examples=EXAMPLES, about=about,
        info=lambda: {"model": kind, "classes": generative.CLASSES, "max_images": MAX_IMAGES},
        warmup=lambda: make(generative.CLASSES[0], 1, 0),
        body_advice='Send a small JSON object such as {"class": "Sneaker", "n": 4, "seed": 1}.')

    @app.post("/generate", response_model=GenerateResponse, response_model_by_alias=True)
    def generate(request: GenerateRequest) -> GenerateResponse:
        images = make(request.class_name, request.n, request.seed)
        return GenerateResponse(class_name=request.class_name, n=request.n, seed=request.seed, model=kind,
                                images=images)

    return app
