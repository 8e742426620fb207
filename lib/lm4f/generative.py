"""Generative image models of chapter 2.3, measured: a conditional GAN and a small diffusion model.

Both learn Fashion-MNIST (28x28 greyscale product images, ten classes) and both are *conditional*:
ask for a class ("Sneaker"), get images of it. Shared by the chapter notebook, the ``/generate``
app (``lm4f.apps.generate``) and the tests.

- pixels: uint8 0-255 (N, 28, 28) <-> float tensors in [-1, 1] (N, 1, 28, 28) (``to_unit``,
  ``to_uint8``); both generators output [-1, 1] through ``tanh`` or clipping;
- ``Generator`` / ``Discriminator``: a DCGAN-style pair (Radford et al. 2016) with the class as an
  embedding (generator input) and a projection (discriminator output, Miyato & Koyama 2018);
- ``train_gan``: the two-player game, with the original *minimax* generator loss or the
  *non-saturating* one (Goodfellow et al. 2014, section 3);
- ``Denoiser`` and ``Diffusion``: a small U-Net that predicts the noise added to an image, the
  forward noising process with a linear beta schedule, training on the noise-prediction loss
  (Ho et al. 2020), and sampling with fewer steps than training used (DDIM, Song et al. 2021),
  with classifier-free guidance (Ho & Salimans 2022);
- measuring: ``frechet_distance`` between two sets of features (of the course's own 6.3
  classifier: not the Inception network of the published FID, so the numbers are comparable only
  with each other), ``nearest_distances`` (how close each generated image is to a training image:
  a copying check);
- ``save_generator`` / ``load_generator``: a versioned saved model (``lm4f.saved_models``, case
  ``generate``), every file checked when loaded.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lm4f.vision import CLASSES, IMAGE_SIZE

__all__ = [
    "CLASSES",
    "LATENT",
    "to_unit",
    "to_uint8",
    "Generator",
    "Discriminator",
    "train_gan",
    "Denoiser",
    "Diffusion",
    "train_diffusion",
    "frechet_distance",
    "frechet_intervals",
    "features",
    "nearest_distances",
    "class_index",
    "save_generator",
    "load_generator",
]

LATENT = 64  # size of the GAN's random input z


def to_unit(images) -> torch.Tensor:
    """uint8 pixels (N, 28, 28) -> float32 tensor (N, 1, 28, 28) in [-1, 1]."""
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected uint8 images of shape (N, 28, 28), got {array.shape}")
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [-1, 1], (N, 1, 28, 28) -> uint8 pixels (N, 28, 28) (values outside are clipped)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return pixels.squeeze(1).to(torch.uint8).cpu().numpy()


def class_index(name) -> int:
    """The index of a class name ("Sneaker" -> 7), case-insensitive; ValueError listing the names."""
    if isinstance(name, str):
        for index, known in enumerate(CLASSES):
            if name.strip().lower() == known.lower():
                return index
    raise ValueError(f"unknown class {name!r}; use one of {CLASSES}")


# ---------------------------------------------------------------------------------------------
# The GAN
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, LATENT) and a class (B,) -> an image (B, 1, 28, 28) in [-1, 1].

    The class embedding is concatenated to z; a Linear layer makes a (2w, 7, 7) map; two
    transposed convolutions double the size twice (7 -> 14 -> 28); tanh squashes to [-1, 1].
    GroupNorm, not DCGAN's BatchNorm: BatchNorm normalises with the batch's statistics while
    training and with running averages afterwards, and a generator trained for a few hundred steps
    then makes near-identical images for every z in eval mode. GroupNorm computes the same thing
    in both modes, so an image depends only on its own z and class.
    """

    def __init__(self, width: int = 32, latent: int = LATENT, n_classes: int = len(CLASSES)):
        super().__init__()
        self.latent, self.width = latent, width
        self.embed = nn.Embedding(n_classes, latent)
        self.project = nn.Linear(2 * latent, 2 * width * 7 * 7)
        self.up = nn.Sequential(
            nn.GroupNorm(8, 2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.GroupNorm(8, width), nn.ReLU(),  # (B, w, 14, 14)
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh(),  # (B, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], dim=1))  # (B, 2w*49)
        return self.up(h.view(-1, 2 * self.width, 7, 7))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Images (B, 1, 28, 28) for the classes ``labels`` (B,), reproducible from ``seed``."""
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(len(labels), self.latent, generator=generator)
        return self(z, labels)


class Discriminator(nn.Module):
    """An image (B, 1, 28, 28) and its class (B,) -> a logit (B,): real (high) or generated (low).

    Two strided convolutions with LeakyReLU (28 -> 14 -> 7) give features h; the logit is
    ``linear(h) + <embed(class), h>`` (the projection discriminator): it judges "a real *Sneaker*",
    not only "a real image".
    """

    def __init__(self, width: int = 32, n_classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),  # (B, w, 14, 14)
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),  # (B, 2w, 7, 7)
            nn.Flatten(),  # (B, 2w*49)
        )
        size = 2 * width * 7 * 7
        self.linear = nn.Linear(size, 1)
        self.embed = nn.Embedding(n_classes, size)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)  # (B, size)
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)


GAN_LOSSES = ("non_saturating", "minimax")


def train_gan(images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64, width: int = 32,
              loss: str = "non_saturating", mode_seeking: float = 0.0, lr: float = 2e-4, seed: int = 0,
              log_every: int = 25, device=None) -> tuple[Generator, Discriminator, list[dict]]:
    """Train a conditional GAN for ``steps`` steps on images (N, 1, 28, 28) in [-1, 1] and labels (N,).

    Each step: the discriminator D takes one Adam step on ``BCE(D(x), real) + BCE(D(G(z)), fake)``;
    then the generator G takes one on its loss, either

    - ``"minimax"``: minimise ``log(1 - D(G(z)))``, the game exactly as written; when D is sure
      (D(G(z)) near 0) its gradient vanishes, so G learns slowly or not at all early on;
    - ``"non_saturating"``: maximise ``log D(G(z))`` instead: the same fixed point, strong
      gradients exactly when G is losing (Goodfellow et al. 2014 recommend it).

    ``mode_seeking`` > 0 adds a diversity term to G's loss (Mao et al. 2019, "mode seeking GANs"):
    each batch holds every class twice, with two different z, and G is penalised by
    ``mode_seeking * |z1 - z2| / |G(z1) - G(z2)|`` (mean absolute differences): making the same image
    from different z, the signature of mode collapse, becomes expensive. Adam with lr 2e-4 and
    beta1 0.5, as in DCGAN. The history also records ``spread``: the mean absolute pixel difference
    between the two images of each pair (0 when G ignores z). Returns (G, D, history); ``history`` holds, every
    ``log_every`` steps, the mean losses and D's mean probability on real and on generated images.
    """
    if loss not in GAN_LOSSES:
        raise ValueError(f"loss must be one of {GAN_LOSSES}, got {loss!r}")
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    G, D = Generator(width).to(device), Discriminator(width).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(seed)
    images, labels = images.to(device), labels.to(device)
    history, window = [], []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(images), (batch_size,), generator=rng).to(device)
        real, classes = images[index], labels[index]  # (B, 1, 28, 28), (B,)
        half = batch_size // 2
        classes_fake = torch.cat([classes[:half], classes[:half]])  # each class twice: pairs (i, i + half)
        z = torch.randn(2 * half, G.latent, generator=rng).to(device)
        fake = G(z, classes_fake)
        real_logit, fake_logit = D(real, classes), D(fake.detach(), classes_fake)
        d_loss = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()  # BCE(real, 1) + BCE(fake, 0)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        fake_logit = D(fake, classes_fake)
        g_loss = F.softplus(-fake_logit).mean() if loss == "non_saturating" else -F.softplus(fake_logit).mean()
        image_gap = (fake[:half] - fake[half:]).abs().mean()
        if mode_seeking:
            g_loss = g_loss + mode_seeking * (z[:half] - z[half:]).abs().mean() / (image_gap + 1e-5)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        window.append((d_loss.item(), g_loss.item(), torch.sigmoid(real_logit.detach()).mean().item(),
                       torch.sigmoid(fake_logit.detach()).mean().item(), image_gap.item()))
        if step % log_every == 0 or step == steps:
            d, g, p_real, p_fake, spread = np.mean(window, axis=0)
            history.append({"step": step, "d_loss": d, "g_loss": g, "d_real": p_real, "d_fake": p_fake,
                            "spread": spread, "seconds": time.perf_counter() - started})
            window = []
    G.eval()
    D.eval()
    return G, D, history


# ---------------------------------------------------------------------------------------------
# The diffusion model
# ---------------------------------------------------------------------------------------------
def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim), as for positions in a Transformer."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None, :].to(t.device)  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    """conv -> GroupNorm -> SiLU, plus the time-and-class embedding added per channel, twice, with a skip."""

    def __init__(self, channels_in: int, channels_out: int, embedding: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.condition = nn.Linear(embedding, channels_out)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.condition(e)[:, :, None, None]
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class Denoiser(nn.Module):
    """A small U-Net: noisy image x_t (B, 1, 28, 28), step t (B,) and class (B,) -> the noise (B, 1, 28, 28).

    28x28 with ``width`` channels -> 14x14 with 2 width -> 7x7 with 2 width, and back up, with the
    features of each level added on the way up (the U). The class index ``len(CLASSES)`` means "no
    class": training drops the class 10% of the time so that one network also predicts
    unconditionally, which classifier-free guidance needs.
    """

    def __init__(self, width: int = 16, n_classes: int = len(CLASSES)):
        super().__init__()
        self.width, self.n_classes = width, n_classes
        embedding = 4 * width
        self.time = nn.Sequential(nn.Linear(width, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.label = nn.Embedding(n_classes + 1, embedding)  # the last row: "no class"
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.down1 = _Block(width, width, embedding)  # 28x28
        self.down2 = _Block(width, 2 * width, embedding)  # 14x14
        self.mid = _Block(2 * width, 2 * width, embedding)  # 7x7
        self.up2 = _Block(2 * width, 2 * width, embedding)  # 14x14
        self.up1 = _Block(2 * width, width, embedding)  # 28x28
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        e = self.time(_timestep_embedding(t, self.width)) + self.label(labels)  # (B, 4w)
        h1 = self.down1(self.stem(x), e)  # (B, w, 28, 28)
        h2 = self.down2(F.avg_pool2d(h1, 2), e)  # (B, 2w, 14, 14)
        h3 = self.mid(F.avg_pool2d(h2, 2), e)  # (B, 2w, 7, 7)
        u2 = self.up2(F.interpolate(h3, scale_factor=2.0, mode="nearest") + h2, e)  # (B, 2w, 14, 14)
        u1 = self.up1(F.interpolate(u2, scale_factor=2.0, mode="nearest"), e)  # (B, w, 28, 28)
        return self.out(u1 + h1)


class Diffusion:
    """The forward noising process and sampling, around a ``Denoiser``.

    ``betas`` rise linearly from 1e-4 to 0.02 over ``steps`` training steps (Ho et al. 2020);
    ``alpha_bar[t]`` is the share of the original image's variance left at step t, so that
    ``x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) noise`` (``noise_images``): at t = 0
    the image is barely touched, at the last step it is almost pure noise.
    """

    def __init__(self, model: Denoiser, steps: int = 1000):
        self.model, self.steps = model, steps
        self.betas = torch.linspace(1e-4, 0.02, steps)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)  # (steps,)

    def noise_images(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for clean images x0 (B, 1, 28, 28) at steps t (B,) with the given noise."""
        a = self.alpha_bar.to(x0.device)[t][:, None, None, None]
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def loss(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
             drop_label: float = 0.1) -> torch.Tensor:
        """The noise-prediction loss: mean squared error between the noise added and the noise predicted."""
        t = torch.randint(0, self.steps, (len(x0),), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        dropped = (torch.rand(len(x0), generator=generator) < drop_label).to(x0.device)
        labels = torch.where(dropped, torch.full_like(labels, self.model.n_classes), labels)
        return F.mse_loss(self.model(self.noise_images(x0, t, noise), t, labels), noise)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, sampling_steps: int = 50, guidance: float = 2.0, seed: int = 0,
               eta: float = 0.0) -> torch.Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] for the classes ``labels`` (B,), in ``sampling_steps`` denoising steps.

        DDIM (Song et al. 2021): visit ``sampling_steps`` evenly spaced steps of the training
        schedule, at each predict the noise, estimate the clean image and move to the previous
        visited step. ``eta = 0`` is deterministic given the starting noise; ``eta = 1`` adds
        fresh noise like the original DDPM sampler. ``guidance`` w mixes the conditional and
        unconditional predictions, ``(1 + w) eps(x, class) - w eps(x, no class)`` (w = 0: no guidance).
        """
        if not 1 <= sampling_steps <= self.steps:
            raise ValueError(f"sampling_steps must be between 1 and {self.steps}, got {sampling_steps}")
        self.model.eval()
        device = next(self.model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        labels = labels.to(device)
        x = torch.randn(len(labels), 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
        visited = torch.linspace(self.steps - 1, 0, sampling_steps).round().long()
        alpha_bar = self.alpha_bar.to(device)
        nothing = torch.full_like(labels, self.model.n_classes)
        for i, t in enumerate(visited.tolist()):
            steps = torch.full((len(labels),), t, dtype=torch.long, device=device)
            if guidance:
                both = self.model(torch.cat([x, x]), torch.cat([steps, steps]), torch.cat([labels, nothing]))
                conditional, unconditional = both.chunk(2)
                eps = (1 + guidance) * conditional - guidance * unconditional
            else:
                eps = self.model(x, steps, labels)
            a_t = alpha_bar[t]
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            if i == len(visited) - 1:
                x = x0
                break
            a_prev = alpha_bar[visited[i + 1]]
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise consistent with the clipped x0
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta:
                x = x + sigma * torch.randn(x.shape, generator=generator).to(device)
        return x


def train_diffusion(images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64, width: int = 16,
                    lr: float = 2e-3, seed: int = 0, log_every: int = 25, device=None) -> tuple[Diffusion, list[dict]]:
    """Train a ``Denoiser`` for ``steps`` Adam steps on images (N, 1, 28, 28) in [-1, 1] and labels (N,).

    The learning rate warms up over the first 5% of steps, then follows a cosine down to zero.
    Returns (the ``Diffusion`` around the trained model, history of the mean loss every ``log_every`` steps).
    """
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    diffusion = Diffusion(Denoiser(width).to(device))
    optimizer = torch.optim.AdamW(diffusion.model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    rng = torch.Generator().manual_seed(seed)
    images, labels = images.to(device), labels.to(device)
    history, window = [], []
    started = time.perf_counter()
    diffusion.model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(images), (batch_size,), generator=rng).to(device)
        loss = diffusion.loss(images[index], labels[index], rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(window)), "seconds": time.perf_counter() - started})
            window = []
    diffusion.model.eval()
    return diffusion, history


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """The 6.3 classifier's penultimate features (N, hidden) of images (N, 1, 28, 28) in [-1, 1].

    ``classifier`` is an ``lm4f.vision.ProductCNN``; images are mapped back to the classifier's own
    normalisation first. The features are the ReLU outputs of its hidden Linear layer, the layer
    its last Linear layer reads: what it has learned to look at.
    """
    from lm4f.vision import MEAN, STD

    classifier.eval()
    body = nn.Sequential(*list(classifier.head.children())[:-2])  # Flatten, Linear, ReLU (no dropout, no output)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = ((images[start:start + batch_size] + 1.0) / 2.0 - MEAN) / STD
        chunks.append(body(classifier.features(batch.contiguous(memory_format=torch.channels_last))).numpy())
    return np.concatenate(chunks).astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets a (N, d) and b (M, d).

    ``|mu_a - mu_b|^2 + trace(C_a + C_b - 2 (C_a C_b)^(1/2))``: zero for identical distributions,
    larger the further apart their means and covariances are (Heusel et al. 2017 use the features
    of an Inception network and call it FID; here any features).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N, d) and (M, d) with N, M >= 2; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace((C_a C_b)^(1/2)) = sum of the square roots of the eigenvalues of C_a^(1/2) C_b C_a^(1/2),
    # a symmetric matrix: two symmetric eigendecompositions instead of a general matrix square root.
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def frechet_intervals(reference: np.ndarray, sets: dict, resamples: int = 200, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Fréchet distance of each feature set in ``sets`` to ``reference``, with bootstrap intervals.

    Each resample draws the reference and every set anew (with replacement) and recomputes all
    distances, so differences between two sets are judged on the same reference draws. Returns
    ``{name: {"value", "low", "high"}}`` and, under ``"differences"``, ``{(a, b): {"value", "low",
    "high"}}`` for every pair: FD(a) - FD(b), negative when a is closer to the reference.
    """
    rng = np.random.default_rng(seed)
    names = list(sets)
    values = {name: frechet_distance(reference, sets[name]) for name in names}
    draws = {name: [] for name in names}
    for _ in range(resamples):
        ref = reference[rng.integers(0, len(reference), len(reference))]
        for name in names:
            chosen = sets[name][rng.integers(0, len(sets[name]), len(sets[name]))]
            draws[name].append(frechet_distance(ref, chosen))
    tail = (1.0 - level) / 2.0 * 100.0
    result = {name: {"value": values[name], "low": float(np.percentile(draws[name], tail)),
                     "high": float(np.percentile(draws[name], 100.0 - tail))} for name in names}
    differences = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = np.array(draws[a]) - np.array(draws[b])
            differences[(a, b)] = {"value": values[a] - values[b], "low": float(np.percentile(gap, tail)),
                                   "high": float(np.percentile(gap, 100.0 - tail))}
    result["differences"] = differences
    return result


def nearest_distances(samples: np.ndarray, reference: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """For each sample (N, 28, 28) uint8, the pixel distance (root mean square, 0-255 scale) to its nearest
    image in ``reference`` (M, 28, 28): small means the sample is (nearly) a copy of a reference image."""
    s = samples.reshape(len(samples), -1).astype(np.float32)
    r = torch.from_numpy(reference.reshape(len(reference), -1).astype(np.float32))
    r_norms = (r ** 2).sum(1)
    result = []
    for start in range(0, len(s), batch_size):
        chunk = torch.from_numpy(s[start:start + batch_size])
        squared = (chunk ** 2).sum(1, keepdim=True) + r_norms[None, :] - 2.0 * chunk @ r.T  # (b, M)
        result.append(squared.min(1).values.clamp(min=0).div(s.shape[1]).sqrt().numpy())
    return np.concatenate(result)


# ---------------------------------------------------------------------------------------------
# Saving and loading a generator (what the /generate service serves)
# ---------------------------------------------------------------------------------------------
CASE = "generate"
WEIGHTS = "weights.pt"


def save_generator(model, *, settings: dict | None = None, metrics: dict | None = None,
                   training: dict | None = None, root=None):
    """Save a ``Generator`` or a ``Diffusion`` as a new version of the ``generate`` case (``lm4f.saved_models``).

    ``models/generate/vN/`` gets the weights and ``config.json`` (kind, shape, classes and
    ``settings``, e.g. a diffusion model's sampling steps and guidance); ``metadata.json`` gets the
    checksums of every file and of the data, ``metrics`` and ``training``. Returns the ``SavedModel``.
    """
    from lm4f import data
    from lm4f.saved_models import save_model

    if isinstance(model, Generator):
        kind, module, shape = "gan", model, {"width": model.width, "latent": model.latent}
    elif isinstance(model, Diffusion):
        kind, module, shape = "diffusion", model.model, {"width": model.model.width, "steps": model.steps}
    else:
        raise TypeError(f"expected a Generator or a Diffusion, got {type(model).__name__}")

    def write(folder: Path) -> dict:
        torch.save({name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}, folder / WEIGHTS)
        return {"kind": kind, "shape": shape, "classes": CLASSES, "settings": settings or {}}

    return save_model(CASE, write, metrics=metrics or {}, training=training, root=root,
                      data={f"fashion-mnist/{name}": digest for name, digest in data.FASHION_MNIST_FILES.items()})


def load_generator(path) -> tuple[object, object]:
    """The generator saved by ``save_generator`` (a version folder, or ``models/generate`` for the newest)
    and its ``SavedModel``. Every file is checked first: ``lm4f.saved_models.ModelFileError`` names a
    missing, truncated or foreign file and the command that rebuilds the model."""
    from lm4f.saved_models import open_model

    saved = open_model(path, CASE)
    config = saved.config
    state = torch.load(saved.file(WEIGHTS), map_location="cpu", weights_only=True)
    if config.get("kind") == "gan":
        model = Generator(width=config["shape"]["width"], latent=config["shape"]["latent"])
        model.load_state_dict(state)
        return model.eval(), saved
    if config.get("kind") == "diffusion":
        denoiser = Denoiser(width=config["shape"]["width"])
        denoiser.load_state_dict(state)
        return Diffusion(denoiser.eval(), steps=config["shape"]["steps"]), saved
    raise saved.problem("config.json", f"names an unknown kind {config.get('kind')!r}")
