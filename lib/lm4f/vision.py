"""The product-image classifier of case study 6.3, shared by the chapter notebook, its exercise,
the HTTP app (``lm4f.apps.vision``), the benchmark and the tests.

- preprocessing: uint8 images (N, 28, 28) -> normalised float tensors (N, 1, 28, 28);
- augmentation on a batch (horizontal flip, shifted crop), done in torch so it costs little;
- the models: softmax regression, MLP, a two-block CNN and a small ResNet;
- ``fit`` (AdamW with a one-cycle or constant learning rate) and ``predict_proba``;
- export with ``torch.export`` to a ``.pt2`` file and reload;
- ``decode_png``: bytes of an uploaded PNG -> a checked (28, 28) uint8 array.
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

    def __init__(self, hidden: int = 128, dropout: float = 0.2):
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
            nn.Linear(hidden, 10),  # (B, 10) logits
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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Training and prediction
# ------------------------------------------------------------------------------------------------

def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1,
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


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
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


def save_classifier(folder, model: nn.Module, architecture: str = "") -> dict:
    """Write what serving needs into ``folder``: the exported model (``model.pt2``); return its config.

    The config (``config.json`` of a saved version, see ``lm4f.saved_models``) holds the class
    names, the image size and the normalisation the model was trained with.
    """
    from pathlib import Path

    export_model(model, Path(folder) / MODEL_FILE)
    return {"classes": CLASSES, "image_size": IMAGE_SIZE, "mean": MEAN, "std": STD,
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
