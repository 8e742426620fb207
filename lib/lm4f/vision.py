"""The product-image classifier of case study 6.3, shared by the chapter notebook, its exercise,
the HTTP app (``lm4f.apps.vision``), the benchmark and the tests.

- preprocessing: uint8 images (N, 28, 28) -> normalised float tensors (N, 1, 28, 28);
- augmentation on a batch (horizontal flip, shifted crop), done in torch so it costs little;
- the models: softmax regression, MLP, a two-block CNN and a small ResNet;
- ``train_classifier`` (AdamW, one-cycle or constant learning rate), ``predict_proba``, ``classifier_accuracy``;
- export with ``torch.export`` to a ``.pt2`` file and reload;
- ``decode_png``: bytes of an uploaded PNG -> a checked (28, 28) uint8 array;
- real photos: ``open_image`` (bytes or a file, its size checked from the header before decoding)
  and ``prepare_image`` (any size and colour mode -> the model's (28, 28) input, with the list of
  steps it took), used by the API's ``/predict/image`` and by ``lm4f.own_data``'s image folders.
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lm4f.data import FASHION_MNIST_CLASSES
from lm4f.utils import SMOKE

CLASSES = list(FASHION_MNIST_CLASSES)
IMAGE_SIZE = 28
# Mean and standard deviation of the 60,000 training images scaled to [0, 1]; the chapter
# notebook recomputes them from the data and checks these constants.
MEAN = 0.2860
STD = 0.3530


class ImageError(ValueError):
    """An input image the model cannot take; the message says what is wrong and how to fix it."""


class ImageSizeError(ImageError):
    """An image whose header declares other dimensions than 28x28 (found before anything is decompressed)."""


# ------------------------------------------------------------------------------------------------
# Preprocessing and augmentation
# ------------------------------------------------------------------------------------------------

def to_tensor(images) -> torch.Tensor:
    """uint8 pixels 0-255, shape (N, 28, 28) or (28, 28) -> float32 (N, 1, 28, 28), mean 0, std 1."""
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]  # (1, 28, 28)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageError(f"expected images of shape (N, 28, 28) or (28, 28), got {array.shape}")
    scaled = torch.from_numpy(array.astype(np.float32) / 255.0)  # (N, 28, 28) in [0, 1]
    return ((scaled - MEAN) / STD).unsqueeze(1)  # (N, 1, 28, 28)


def augment(batch: torch.Tensor, generator: torch.Generator, flip: bool = True, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip (half the images) and a random shift of up to ``shift`` pixels.

    batch: (B, 1, 28, 28) normalised images. The shift pads with the background value (pixel 0)
    and crops a random 28x28 window: a "random crop with padding". No vertical flips: an upside
    down ankle boot is not a product photo anyone uploads.
    """
    out = batch
    if flip:
        flipped = torch.rand(len(batch), generator=generator) < 0.5  # (B,)
        out = torch.where(flipped[:, None, None, None].to(out.device), out.flip(-1), out)
    if shift:
        background = (0.0 - MEAN) / STD
        padded = F.pad(out, (shift, shift, shift, shift), value=background)  # (B, 1, 32, 32) for shift 2
        dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()  # one shift per batch
        out = padded[:, :, dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE]
    return out.contiguous()


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """The same (B, C, H, W) tensor, stored pixel by pixel with the C channel values side by side.

    oneDNN's CPU convolution and max-pool kernels are much faster in this layout than in the
    default one (all of channel 0, then all of channel 1, ...); shapes and values do not change.
    """
    return images.contiguous(memory_format=torch.channels_last)


def softmax_regression() -> nn.Module:
    """Multinomial logistic regression: one Linear layer on the 784 pixels."""
    return nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 10))  # (B, 784) -> (B, 10)


def mlp(hidden: int = 256) -> nn.Module:
    """Two hidden layers of ``hidden`` units with ReLU."""
    return nn.Sequential(
        nn.Flatten(),  # (B, 784)
        nn.Linear(784, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),  # (B, 10) logits
    )


class ProductCNN(nn.Module):
    """conv(32) -> pool -> conv(64) -> pool -> Linear(3136, hidden) -> Linear(hidden, 10).

    Each block is conv -> max-pool -> BatchNorm -> ReLU: pooling *before* BatchNorm and ReLU means
    those two run on a quarter of the activations. (Max-pool commutes with ReLU exactly; with
    BatchNorm only when its scale is positive, so this is a slightly different model from
    conv -> BN -> ReLU -> pool, not a rewrite of the same one.) Together with the channels-last
    memory layout (see ``to_channels_last``) it halves the CPU time of a training step, measured on
    one thread: 89 ms -> 45 ms for a batch of 128.
    """

    def __init__(self, hidden: int = 128, dropout: float = 0.2, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 3136)
            nn.Linear(64 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, classes),  # (B, classes) logits; 10 for Fashion-MNIST
        )
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images: (B, 1, 28, 28)
        return self.head(self.features(to_channels_last(images)))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, plus the input (the skip connection).

    With ``stride=2`` or a change of width, the skip path is a 1x1 convolution so the shapes match.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W)
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H / stride, W / stride)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet for 28x28 grey images: a stem, then one residual stage per width.

    Default (the CPU size), widths=(24, 48), pool_stem=True: stem conv(24) at 28x28 -> max-pool to
    14x14 -> block(24) at 14x14 -> block(48, stride 2) at 7x7 -> global average pool ->
    Linear(48, 10). The GPU size uses e.g. widths=(64, 128, 256), pool_stem=False, blocks=2.
    """

    def __init__(self, widths=(24, 48), blocks: int = 1, pool_stem: bool = True):
        super().__init__()
        stem = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        if pool_stem:
            stem.append(nn.MaxPool2d(2))  # (B, widths[0], 14, 14)
        self.stem = nn.Sequential(*stem)
        layers, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                layers.append(ResidualBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 10)
        self.to(memory_format=torch.channels_last)  # about 1.5x faster on a CPU, see to_channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images: (B, 1, 28, 28)
        features = self.stages(self.stem(to_channels_last(images)))  # (B, C, h, w)
        pooled = features.mean(dim=(2, 3))  # (B, C): global average pool
        return self.head(pooled)  # (B, 10) logits


# ------------------------------------------------------------------------------------------------
# Training and prediction
# ------------------------------------------------------------------------------------------------

def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1,
        batch_size: int = 256, lr: float = 3e-3, weight_decay: float = 1e-4,
        schedule: str = "onecycle", use_augmentation: bool = False, label_smoothing: float = 0.0,
        seed: int = 0, device=None, evaluate=None) -> list[dict]:
    """Train ``model`` in place with AdamW on (images (N, 1, 28, 28), labels (N,)).

    ``schedule``: "onecycle" (warm up to ``lr`` over the first 30% of steps, then cosine down to
    nearly zero) or "constant". ``evaluate(model) -> dict`` runs after each epoch. Returns one dict
    per epoch: epoch, train_loss, seconds, and the evaluation metrics. On a GPU the data move to it
    once and the forward pass runs in bfloat16 autocast; on a CPU everything stays float32, except
    under ``LM4F_SIZE=smoke``, which runs the GPU path (data on the device, bf16 autocast) on the CPU.
    """
    if schedule not in ("onecycle", "constant"):
        raise ValueError(f"schedule must be 'onecycle' or 'constant', not {schedule!r}")
    if images.ndim != 4 or images.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be (N, 1, 28, 28) (use lm4f.vision.to_tensor), got {tuple(images.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    gpu_path = device.type == "cuda" or SMOKE
    if gpu_path:  # a GPU: keep the whole data set there (54,000 images are 170 MB) and
        images, labels = images.to(device), labels.to(device)  # augment on the GPU, in bfloat16 autocast
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    scheduler = None
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.3)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)  # (N,)
        total_loss = 0.0
        for start in range(0, len(images), batch_size):
            index = order[start:start + batch_size]
            batch = images[index]  # (B, 1, 28, 28)
            if use_augmentation:
                batch = augment(batch, generator)
            batch, targets = batch.to(device, non_blocking=True), labels[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu_path):
                logits = model(batch)  # (B, 10)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach() * len(index)  # no .item(): no GPU sync per step
        row = {"epoch": epoch, "train_loss": float(total_loss) / len(images), "seconds": time.perf_counter() - started}
        if evaluate is not None:
            row.update(evaluate(model))
        history.append(row)
    model.eval()
    return history


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities (N, 10) for normalised images (N, 1, 28, 28), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    chunks = [F.softmax(model(images[start:start + batch_size].to(device)).float(), dim=1).cpu()
              for start in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose most likely class is the label."""
    return float((predict_proba(model, images).argmax(1) == labels.cpu()).float().mean())


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

def export_model(model: nn.Module, path) -> None:
    """Save ``model`` (in eval mode, on the CPU) with ``torch.export`` as a ``.pt2`` file that loads
    without its Python class (``load_model``). Any batch size from 1 to 65,536 is accepted.

    The weights are saved in the default memory layout (``torch.export.save`` warns about
    channels-last tensors); ``load_model`` puts them back in channels-last.
    """
    import copy

    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)  # (B, 1, 28, 28); B is marked dynamic below
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def load_model(path) -> nn.Module:
    """The model saved by ``export_model``, as a callable module: (B, 1, 28, 28) -> (B, 10) logits.

    It was exported in eval mode and stays in it (calling ``.eval()`` on it is not supported). Its
    convolution weights go back to channels-last, the layout they were trained in: the CPU kernels
    then compute exactly what the model in memory computed (bit for bit), not merely close to it.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}: create it with lm4f.vision.export_model(model, path)")
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # a truncated or foreign file: zip, pickle or schema errors
        raise ValueError(f"{path} is not a model saved by lm4f.vision.export_model ({type(error).__name__}: "
                         f"{str(error)[:120]}); export it again") from error
    return program.module().to(memory_format=torch.channels_last)


MODEL_FILE = "model.pt2"


def save_classifier(folder, model: nn.Module, architecture: str = "", classes: list[str] | None = None) -> dict:
    """Write what serving needs into ``folder``: the exported model (``model.pt2``); return its config.

    The config (``config.json`` of a saved version, see ``lm4f.saved_models``) holds the class
    names (``classes``, default Fashion-MNIST's ten, in the order of the model's outputs), the image
    size and the normalisation the model was trained with.
    """
    from pathlib import Path

    export_model(model, Path(folder) / MODEL_FILE)
    return {"classes": list(classes or CLASSES), "image_size": IMAGE_SIZE, "mean": MEAN, "std": STD,
            "architecture": architecture or type(model).__name__, "model_file": MODEL_FILE}


def load_classifier(saved) -> tuple[nn.Module, list[str]]:
    """The model and class names of a verified saved version (``lm4f.saved_models.open_model(path, "images")``)."""
    config = saved.config
    if (config.get("image_size"), config.get("mean"), config.get("std")) != (IMAGE_SIZE, MEAN, STD):
        raise saved.problem("config.json", f"was saved for {config.get('image_size')}-pixel images normalised with "
                                           f"mean {config.get('mean')}, std {config.get('std')}; this library feeds "
                                           f"{IMAGE_SIZE}-pixel images with mean {MEAN}, std {STD}")
    try:
        model = load_model(saved.file(config.get("model_file", MODEL_FILE)))
    except (FileNotFoundError, ValueError) as error:
        raise saved.problem(config.get("model_file", MODEL_FILE), f"cannot be loaded ({error})") from error
    return model, list(config["classes"])


# ------------------------------------------------------------------------------------------------
# Decoding an uploaded image
# ------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(payload: bytes) -> tuple[int, int]:
    """(width, height) that a PNG file declares in its header chunk (IHDR), read without decoding anything.

    A PNG must start with the 8-byte signature and then IHDR: 4 bytes length, ``IHDR``, 4 bytes
    width, 4 bytes height (big-endian). A "decompression bomb" is a small file whose header declares
    huge dimensions (100000x100000 pixels: 10 GB once decoded); reading the header first refuses it
    before a single pixel is decompressed.
    """
    if not payload.startswith(PNG_SIGNATURE):
        raise ImageError("the upload is not a PNG file (its first bytes are not the PNG signature): "
                         "convert the image to PNG, 28x28 pixels, greyscale")
    if len(payload) < 24 or payload[12:16] != b"IHDR":
        raise ImageError("the PNG file is corrupt or truncated: it ends before its header (IHDR chunk); "
                         "re-export it and send the whole file")
    return int.from_bytes(payload[16:20], "big"), int.from_bytes(payload[20:24], "big")


def decode_png(payload: bytes) -> np.ndarray:
    """Bytes of a PNG file -> uint8 array (28, 28), or ImageError saying what is wrong.

    The dimensions are checked from the header before decoding (``ImageSizeError`` for anything
    but 28x28, so a decompression bomb costs nothing). Colour PNGs are turned into grey. Like
    Fashion-MNIST, the product must be light on a dark background (invert a photo of a dark product
    on white first).
    """
    from PIL import Image, UnidentifiedImageError

    if not payload:
        raise ImageError("the upload is empty: send the bytes of a 28x28 PNG file")
    width, height = png_dimensions(payload)
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageSizeError(f"the image is {width}x{height} pixels; the model takes 28x28: resize it to 28x28 first")
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            size = image.size
            grey = image.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"the PNG file is corrupt or truncated and cannot be decoded ({error}): "
                         "re-export it and send the whole file") from error
    if size != (IMAGE_SIZE, IMAGE_SIZE):  # the header said 28x28; PIL read something else
        raise ImageSizeError(f"the image is {size[0]}x{size[1]} pixels; the model takes 28x28: "
                             "resize it to 28x28 first")
    return np.asarray(grey, dtype=np.uint8).copy()  # (28, 28)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 array (H, W) -> bytes of a greyscale PNG (for tests and examples)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Real images: any size, colour mode and format -> the model's (28, 28) input
# ------------------------------------------------------------------------------------------------

MAX_PIXELS = 50_000_000  # 50 megapixels: a 48 MP phone photo passes; decoded as RGB it takes 150 MB
UPLOAD_FORMATS = ("PNG", "JPEG")  # what the API decodes; an image folder may hold any format Pillow reads
BORDER_SHARE = 1 / IMAGE_SIZE  # the band of each side whose brightness decides inversion (>= 1 pixel)
LIGHT_BACKGROUND = 128  # border median above this (of 255): a light background, so the image is inverted
CONTENT_CONTRAST = 32  # a pixel this much brighter than the background (of 255) belongs to the product
DRAFT_SIDE = 8 * IMAGE_SIZE  # a JPEG is decoded at 1/2, 1/4 or 1/8 scale while both sides stay >= this

OTHER_FORMATS = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"\x00\x00\x01\x00": "ICO"}


class ImageTooLargeError(ImageError):
    """An image whose header declares more pixels than the limit (a decompression bomb, or a huge photo)."""


class UnsupportedImageError(ImageError):
    """A file that is not an image format this reader accepts (e.g. a GIF or HEIC sent to the API)."""


def _format_name(payload: bytes) -> str | None:
    """The format a file's first bytes announce, for formats a user may send by mistake (None if unknown)."""
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "WebP"
    if payload[4:8] == b"ftyp" and payload[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "AVIF" if payload[8:12] == b"avif" else "HEIC"
    return next((name for magic, name in OTHER_FORMATS.items() if payload.startswith(magic)), None)


def open_image(source, *, formats=UPLOAD_FORMATS, max_pixels: int = MAX_PIXELS, name: str | None = None):
    """Open an image (bytes of an upload, or a file path), check its size, decode it: ``(image, steps, header)``.

    The dimensions are read from the header first (Pillow's ``Image.open`` reads no pixels): more
    than ``max_pixels`` raises ``ImageTooLargeError`` before anything is decompressed, so a
    "decompression bomb" (a small file declaring 100000x100000 pixels, 10 GB once decoded) costs
    nothing. A large JPEG is then decoded at a reduced scale (JPEG can do 1/2, 1/4, 1/8 while it
    decodes: less time and memory, and the model sees 28x28 pixels anyway). ``formats``: the Pillow
    format names accepted (``None``: any format Pillow reads). ``steps`` says what was done beyond
    decoding; ``header`` is what the file declared: ``{"format", "width", "height", "mode"}``.
    Raises ``UnsupportedImageError`` for another format, ``ImageError`` for an empty, corrupt or
    truncated file; each message names the file (``name``) and says how to fix it.
    """
    import warnings
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        label = name or "the upload"
        payload = bytes(source)
        if not payload:
            raise ImageError(f"{label} is empty: send the bytes of a PNG or JPEG file")
        stream = io.BytesIO(payload)
    else:
        label = name or str(source)
        path = Path(source)
        if path.stat().st_size == 0:
            raise ImageError(f"{label} is empty (0 bytes): replace it with an image or delete it")
        with open(path, "rb") as handle:
            payload = handle.read(16)
        stream = path
    accepted = " or ".join(formats) if formats else "an image format Pillow reads"
    try:
        with warnings.catch_warnings():  # our own limit (below Pillow's) decides, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=list(formats) if formats else None)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{label} declares more pixels than Pillow will ever decode ({error}); "
                                 f"send an image of at most {max_pixels / 1e6:.0f} megapixels") from error
    except UnidentifiedImageError as error:
        kind = _format_name(payload)
        if kind is not None or not (payload.startswith(PNG_SIGNATURE) or payload.startswith(b"\xff\xd8\xff")):
            what = f"a {kind} file" if kind else "not an image this reader recognises"
            raise UnsupportedImageError(f"{label} is {what}; send {accepted}: convert it first (any image "
                                        "program exports JPEG or PNG)") from error
        kind = "PNG" if payload.startswith(PNG_SIGNATURE) else "JPEG"
        raise ImageError(f"{label} is a corrupt or truncated {kind} file and cannot be decoded: "
                         "re-export it and send the whole file") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label} is corrupt or truncated and cannot be decoded ({error}): "
                         "re-export it and send the whole file") from error
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{label} declares {width}x{height} pixels: it holds no image; re-export it")
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(f"{label} declares {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                                 f"at most {max_pixels / 1e6:.0f} megapixels are accepted: downscale it first "
                                 "(the model sees 28x28 pixels anyway)")
    header = {"format": image.format or "?", "width": width, "height": height, "mode": image.mode}
    steps = []
    if image.format == "JPEG" and min(width, height) >= 2 * DRAFT_SIDE:
        image.draft(image.mode, (DRAFT_SIDE, DRAFT_SIDE))  # picks the smallest scale keeping both sides >= it
        if image.size != (width, height):
            steps.append(f"decoded the {width}x{height} JPEG at reduced scale: {image.size[0]}x{image.size[1]}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{label} is corrupt or truncated and cannot be decoded ({error}): "
                         "re-export it and send the whole file") from error
    return image, steps, header


def _to_grey(image, steps: list[str]) -> np.ndarray:
    """Any Pillow mode -> uint8 greyscale array (H, W); transparency composited onto a contrasting background."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16-bit ("I;16"), 32-bit integer or float greyscale
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if low >= 0 and high <= 255:
            steps.append(f"converted {mode} greyscale to 8-bit (values already 0-255)")
        elif low >= 0 and high <= 65535:
            values = values / 257.0
            steps.append(f"scaled {mode} (16-bit) greyscale 0-65535 to 8-bit 0-255")
        else:
            values = (values - low) / max(high - low, 1e-12) * 255.0
            steps.append(f"stretched {mode} greyscale from {low:g}..{high:g} to 0-255")
        return np.clip(np.round(values), 0, 255).astype(np.uint8)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0  # (H, W), 1 = opaque
        grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
        if alpha.min() >= 1.0:
            steps.append(f"converted {mode} to greyscale (fully opaque: alpha dropped)")
            return grey.astype(np.uint8)
        visible = float((grey * alpha).sum() / max(alpha.sum(), 1e-12))  # mean brightness of what shows
        background = 0.0 if visible > LIGHT_BACKGROUND else 255.0
        steps.append(f"converted {mode} to greyscale; transparent pixels became "
                     f"{'black' if background == 0 else 'white'} (the visible part's mean brightness is "
                     f"{visible:.0f} of 255)")
        return np.round(grey * alpha + background * (1.0 - alpha)).astype(np.uint8)
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    names = {"P": "palette", "1": "black-and-white (1-bit)"}
    steps.append(f"converted {names.get(mode, mode)} to greyscale")
    grey = image.convert("L") if mode in ("RGB", "1", "L") else image.convert("RGB").convert("L")
    assert isinstance(grey, Image.Image)
    return np.asarray(grey, dtype=np.uint8)


def prepare_image(image) -> tuple[np.ndarray, list[str]]:
    """A Pillow image of any size and colour mode -> ``(uint8 array (28, 28), steps)``: the model's input.

    Fashion-MNIST, which the model learned from, shows one product, light on a black background,
    filling a 28x28 square. The same is made from a photo, in this order, each step listed in
    ``steps`` only when it changed something:

    1. upright: a phone photo's EXIF orientation tag is applied;
    2. greyscale: RGB, palette, CMYK, 1-bit -> 8-bit grey (ITU-R 601 luma, Pillow's ``convert("L")``);
       16-bit grey is scaled 0-65535 -> 0-255; transparent pixels become black when the visible
       part is mostly light, white otherwise (so the product stands out either way);
    3. inverted when the background is light. The rule: the median brightness of a band along the
       four edges (1/28 of the shorter side, at least one pixel; the edges of a product photo show
       the background, and the median ignores a product that touches an edge) above 128 of 255
       means a light background (a dark-on-light photo);
    4. cropped to the product: the smallest box holding every pixel at least 32 levels brighter
       than the background (the border's median), as Fashion-MNIST's images were trimmed;
    5. padded to a square with the background value, the product centred (the aspect is kept);
    6. resized to 28x28 (Lanczos, which averages over the pixels each output pixel covers).

    A 28x28 greyscale image with a dark background comes back unchanged, with the step
    "none: ...". The array is what ``to_tensor`` scales like the training images (/255, then the
    training mean and standard deviation).
    """
    from PIL import Image, ImageOps

    steps: list[str] = []
    orientation = image.getexif().get(0x0112, 1)  # EXIF "Orientation"
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        steps.append(f"rotated upright (EXIF orientation {orientation})")
    grey = _to_grey(image, steps)  # (H, W) uint8
    height, width = grey.shape
    band = max(1, round(min(height, width) * BORDER_SHARE))
    border = np.concatenate([grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(),
                             grey[:, -band:].ravel()])
    border_level = float(np.median(border))
    if border_level > LIGHT_BACKGROUND:
        grey = 255 - grey
        steps.append(f"inverted: light background (border median {border_level:.0f} of 255; "
                     "the model expects a light product on a dark background)")
        border_level = 255.0 - border_level
    background = int(round(border_level))
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        rows, columns = np.nonzero(grey.astype(np.int16) >= background + CONTENT_CONTRAST)
        if len(rows):
            top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
            if (bottom - top, right - left) != (height, width):
                grey = grey[top:bottom, left:right]
                steps.append(f"cropped to the product: {right - left}x{bottom - top} of {width}x{height}")
                height, width = grey.shape
    if width != height:
        side = max(width, height)
        square = np.full((side, side), background, dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top:top + height, left:left + width] = grey
        grey = square
        steps.append(f"padded {width}x{height} to {side}x{side} (background value {background})")
        width = height = side
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        resized = Image.fromarray(grey, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
        grey = np.asarray(resized, dtype=np.uint8)
        steps.append(f"resized {width}x{height} to {IMAGE_SIZE}x{IMAGE_SIZE}")
    if not steps:
        steps.append("none: already a 28x28 greyscale image on a dark background")
    return np.ascontiguousarray(grey, dtype=np.uint8), steps
