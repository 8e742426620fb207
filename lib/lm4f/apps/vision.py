"""HTTP API of the product-image classifier (case study 6.3).

    app = create_app(model)                   # a trained nn.Module or one loaded by lm4f.vision.load_model
    server = lm4f.serving.start(app)
    httpx.post(server.url + "/predict", json={"pixels": [[0] * 28] * 28})
    httpx.post(server.url + "/predict/png", files={"file": ("shoe.png", png_bytes, "image/png")})
    httpx.post(server.url + "/predict/image", files={"file": ("photo.jpg", jpeg_bytes, "image/jpeg")})

All routes answer ``{"label", "class_index", "probabilities": {class name: p}}``. ``/predict`` and
``/predict/png`` take the model's own input, a 28x28 greyscale image; ``/predict/image`` takes a
real photo, a PNG or JPEG of any size and colour mode, converts it with
``lm4f.vision.prepare_image`` and also answers what it did (``"preprocessing": [...]``) and what it
received (``"image": {"format", "width", "height", "mode"}``). A saved model (``python -m lm4f.train
images``) is served with ``python -m lm4f.serve images``. Bad input gets a 4xx whose ``detail`` says
what is wrong and how to fix it: 422 for a wrong shape or pixel range (a PNG's dimensions are read
from its header before anything is decoded, so a "decompression bomb" that declares 100000x100000
pixels is refused at once; ``/predict/image`` refuses more than ``lm4f.vision.MAX_PIXELS`` the same
way, with a 413), 415 for a file that is not a PNG (or JPEG), 400 for a corrupt file, 413 for a body
over ``max_body_bytes`` (``max_upload_bytes`` for ``/predict/image``), checked before parsing.
Health, readiness, metrics, the request log and the error schema come from ``lm4f.apps.service``.
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lm4f import vision
from lm4f.apps.service import ServiceError, create_service

MAX_BODY_BYTES = 256 * 1024  # a 28x28 PNG takes under 2 kB, 28 rows of 28 numbers under 20 kB of JSON
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # /predict/image: a 48-megapixel phone JPEG takes 10-20 MB
EXAMPLES = {"/predict": '{"pixels": [[0, 0, ..., 0], ... 28 rows of 28 values 0-255]}'}


class PixelsRequest(BaseModel):
    """A 28x28 greyscale image as 28 rows of 28 integers 0-255 (light product on a dark background)."""

    model_config = ConfigDict(extra="forbid")
    pixels: list[list[float]] = Field(..., description="28 rows of 28 pixel values, 0 (black) to 255 (white)")

    @field_validator("pixels")
    @classmethod
    def check_shape_and_range(cls, pixels):
        rows = len(pixels)
        widths = sorted({len(row) for row in pixels})
        if rows != vision.IMAGE_SIZE or widths != [vision.IMAGE_SIZE]:
            raise ValueError(f"pixels must be 28 rows of 28 values; got {rows} rows of length(s) {widths}. "
                             "Resize the image to 28x28 first.")
        array = np.asarray(pixels, dtype=np.float64)
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
            raise ValueError("pixel values must be numbers from 0 to 255 (not scaled to 0-1, "
                             "not normalised); multiply 0-1 values by 255")
        return pixels


class Prediction(BaseModel):
    label: str
    class_index: int
    probabilities: dict[str, float]


class ReceivedImage(BaseModel):
    format: str = Field(description="PNG or JPEG")
    width: int
    height: int
    mode: str = Field(description="Pillow's colour mode: RGB, RGBA, P (palette), L (grey), I;16 (16-bit grey), ...")


class ImagePrediction(Prediction):
    preprocessing: list[str] = Field(description="what was done to turn the upload into the model's 28x28 input")
    image: ReceivedImage


def create_app(model, classes: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               about: dict | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """Build the FastAPI app around ``model`` (takes (B, 1, 28, 28) normalised images, returns logits).

    ``classes``: the names of the model's outputs (default Fashion-MNIST's ten). ``about`` (e.g.
    ``SavedModel.about()``) is what ``/ready`` reports about the model. ``max_body_bytes`` limits
    every request body except ``/predict/image``'s, which ``max_upload_bytes`` limits.
    """
    classes = list(classes or vision.CLASSES)
    if not isinstance(model, torch.fx.GraphModule):  # lm4f.vision.load_model's modules are fixed in eval mode
        model.eval()

    def predict(pixels: np.ndarray) -> Prediction:
        batch = vision.to_tensor(np.asarray(pixels).round().clip(0, 255).astype(np.uint8))  # (1, 1, 28, 28)
        with torch.no_grad():
            probabilities = torch.softmax(model(batch).float(), dim=1)[0]  # (classes,)
        index = int(probabilities.argmax())
        return Prediction(label=classes[index], class_index=index,
                          probabilities={name: round(float(p), 6) for name, p in zip(classes, probabilities)})

    app = create_service(
        "Product image classifier", description=f"One of {len(classes)} classes from a product image.",
        max_body_bytes=max_body_bytes, examples=EXAMPLES, about=about, info=lambda: {"classes": classes},
        warmup=lambda: predict(np.zeros((vision.IMAGE_SIZE, vision.IMAGE_SIZE))),
        body_advice="Send one image: a PNG or JPEG photo to /predict/image, a 28x28 PNG to /predict/png, "
                    "or 28 rows of 28 numbers to /predict.",
        route_limits={"/predict/image": max_upload_bytes})

    # The model answers in well under a millisecond, so the route runs on the event loop: handed to a worker
    # thread (a plain `def` route), the hand-off and the threads' contention for the GIL cost more than the model.
    @app.post("/predict", response_model=Prediction)
    async def predict_pixels(request: PixelsRequest) -> Prediction:
        return predict(np.asarray(request.pixels, dtype=np.float64))

    @app.post("/predict/png", response_model=Prediction)
    async def predict_png(file: UploadFile = File(..., description="a 28x28 PNG file")) -> Prediction:
        payload = await file.read()  # the body limit has already capped its size
        if not payload.startswith(vision.PNG_SIGNATURE):
            raise ServiceError(415, f"'{file.filename}' is not a PNG file (content type {file.content_type}); "
                                    "convert the image to PNG, 28x28 pixels, greyscale")
        try:
            pixels = vision.decode_png(payload)
        except vision.ImageSizeError as error:
            raise ServiceError(422, str(error), code="wrong_image_size") from error
        except vision.ImageError as error:
            raise ServiceError(400, str(error), code="corrupt_image") from error
        return predict(pixels)

    @app.post("/predict/image", response_model=ImagePrediction)
    def predict_image(file: UploadFile = File(..., description="a PNG or JPEG of any size and colour mode")):
        payload = file.file.read()  # the body limit has already capped its size; a sync route: decoding is CPU work
        try:
            image, steps, header = vision.open_image(payload, name=f"'{file.filename}'")
        except vision.ImageTooLargeError as error:
            raise ServiceError(413, str(error), code="image_too_large") from error
        except vision.UnsupportedImageError as error:
            raise ServiceError(415, str(error), code="unsupported_media_type") from error
        except vision.ImageError as error:
            raise ServiceError(400, str(error), code="corrupt_image") from error
        with image:
            pixels, more = vision.prepare_image(image)
        steps = [*steps, *more, f"scaled to 0-1 and normalised like the training images (mean {vision.MEAN}, "
                                f"std {vision.STD})"]
        return ImagePrediction(**predict(pixels).model_dump(), preprocessing=steps, image=ReceivedImage(**header))

    return app
