"""Your own data in: the readers behind ``python -m lm4f.train CASE`` with a file or a folder of your own.

    python -m lm4f.own_data examples                   # writes examples/: reviews.csv, ratings.csv, images/
    python -m lm4f.train reviews --csv examples/reviews.csv --text-column review --label-column sentiment
    python -m lm4f.train movies --ratings-csv examples/ratings.csv --user-column customer \\
        --item-column product --rating-column stars --timestamp-column rated_at
    python -m lm4f.train images --image-folder examples/images

Three adapters, one per case study, each turning a founder's file into what the case's model trains on:

- ``read_labelled_texts``: a CSV with a text column and a label column (any two or more values,
  e.g. ``yes``/``no`` or ``negative``/``neutral``/``positive``) -> texts, label ids and label names;
- ``read_interactions``: a CSV of who interacted with what (user, item, optionally rating and time),
  with ids of any form (``"user-17"``, an e-mail hash, a SKU) -> each user's items in time order,
  as dense item ids 1..n (0 is the padding id) and the list that maps them back;
- ``read_image_folder``: a folder with one subfolder per class, images of any size, colour mode and
  format Pillow reads -> (N, 28, 28) uint8 pixels through ``lm4f.vision.prepare_image``, the one
  conversion the image API also uses.

A problem a user can cause (a missing file or column, an empty file, one class only, too few rows
of a class, an unreadable image) raises ``OwnDataError``, whose message names the file, the column
or the image and says how to fix it. ``write_examples`` writes small example files from the course's
data (the "Use your own data" page and the tests train on them).
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "OwnDataError",
    "MIN_PER_LABEL",
    "LabelledTexts",
    "Interactions",
    "ImageFolder",
    "read_labelled_texts",
    "read_interactions",
    "read_image_folder",
    "stratified_split",
    "write_examples",
    "main",
]

MIN_PER_LABEL = 5  # each label (class) needs rows for training, validation and test
SKIPPED_FILES = {"Thumbs.db", "desktop.ini"}  # what file managers leave in image folders


class OwnDataError(ValueError):
    """A file or folder of your own that cannot be trained on; the message names it and says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Reading a CSV: one set of checks for every adapter
# ---------------------------------------------------------------------------------------------
def _read_csv(path, columns: dict[str, str | None]):
    """The CSV at ``path`` as strings, checked: it exists, parses, has rows and every named column.

    ``columns`` maps the command-line option (``--text-column``) to the column it names (None: not used).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise OwnDataError(f"{path} does not exist (or is not a file): check the path")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise OwnDataError(f"{path} is empty: it needs a header row with the column names, then one row per "
                           "example") from None
    except UnicodeDecodeError as error:
        raise OwnDataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): save it as "
                           "'CSV UTF-8' and try again") from None
    except pd.errors.ParserError as error:
        raise OwnDataError(f"{path} is not a valid CSV file ({str(error).strip()}): check the quoting and that "
                           "every row has as many fields as the header") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    for option, column in columns.items():
        if column is not None and column not in frame.columns:
            listed = ", ".join(repr(name) for name in frame.columns)
            raise OwnDataError(f"{path} has no column {column!r} (given by {option}); its columns are: {listed}")
    if frame.empty:
        raise OwnDataError(f"{path} has a header but no rows: add one row per example")
    return frame


def file_digest(path) -> str:
    """sha256 of a file, recorded in a saved model's metadata as the data it was trained on."""
    from lm4f.data import sha256_file

    return sha256_file(Path(path))


# ---------------------------------------------------------------------------------------------
# Texts with labels (the review classifier)
# ---------------------------------------------------------------------------------------------
@dataclass
class LabelledTexts:
    """``texts`` (N,), ``labels`` (N,) int ids into ``names`` (sorted label values), ``dropped`` row counts."""

    texts: list[str]
    labels: np.ndarray
    names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)


def read_labelled_texts(path, text_column: str, label_column: str,
                        min_per_label: int = MIN_PER_LABEL) -> LabelledTexts:
    """A CSV of texts and labels -> ``LabelledTexts``. Rows with an empty text or label are dropped (counted).

    Labels may take any two or more values; they are kept as text (``1`` and ``0`` become the names
    ``"1"`` and ``"0"``) and sorted, so label id i is ``names[i]``. Raises ``OwnDataError`` when a
    column is missing, the file is empty, only one label value remains, or a label has fewer than
    ``min_per_label`` rows.
    """
    frame = _read_csv(path, {"--text-column": text_column, "--label-column": label_column})
    texts = frame[text_column].str.strip()
    labels = frame[label_column].str.strip()
    empty_text, empty_label = texts == "", labels == ""
    dropped = {"empty text": int(empty_text.sum()), "empty label": int((empty_label & ~empty_text).sum())}
    keep = ~(empty_text | empty_label)
    texts, labels = texts[keep], labels[keep]
    if keep.sum() == 0:
        raise OwnDataError(f"{path}: every row has an empty {text_column!r} or {label_column!r}: fill them in")
    counts = labels.value_counts()
    if len(counts) < 2:
        raise OwnDataError(f"{path}: column {label_column!r} has one value only ({counts.index[0]!r} in "
                           f"{int(counts.iloc[0])} rows); a classifier needs two or more labels: add examples of "
                           "the other label(s), or check --label-column")
    rare = counts[counts < min_per_label]
    if len(rare):
        listed = ", ".join(f"{name!r} ({int(n)} row{'s' if n != 1 else ''})" for name, n in rare.items())
        raise OwnDataError(f"{path}: too few rows for label(s) {listed} in column {label_column!r}; each label "
                           f"needs at least {min_per_label} (some go to validation and test): add examples, or "
                           "merge or drop those labels")
    names = sorted(counts.index.tolist())
    index = {name: i for i, name in enumerate(names)}
    return LabelledTexts(texts=texts.tolist(), labels=labels.map(index).to_numpy(dtype=np.int64), names=names,
                         dropped=dropped)


def stratified_split(labels, seed: int = 0, validation: float = 0.1, test: float = 0.1):
    """Index arrays ``(train, validation, test)``, stratified by label, every label in each part.

    Validation and test each take ``validation``/``test`` of the rows, and at least one row of every
    label (so a small file still scores every label); the rest trains.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    classes = len(np.unique(labels))
    rows = np.arange(len(labels))
    test_size = max(int(round(test * len(labels))), classes)
    rest, test_rows = train_test_split(rows, test_size=test_size, stratify=labels, random_state=seed)
    validation_size = max(int(round(validation * len(labels))), classes)
    train_rows, validation_rows = train_test_split(rest, test_size=validation_size, stratify=labels[rest],
                                                   random_state=seed)
    return np.sort(train_rows), np.sort(validation_rows), np.sort(test_rows)


# ---------------------------------------------------------------------------------------------
# Interactions (the recommender)
# ---------------------------------------------------------------------------------------------
@dataclass
class Interactions:
    """Each user's items in time order as dense ids, and the map back to your ids.

    ``sequences``: {your user id: [dense item id, ...]}, oldest first; ``item_ids``: your item id of
    each dense id (``item_ids[0]`` is ``""``, the padding id 0 that no item has); ``rows``: the
    interactions kept; ``dropped``: rows left out and why.
    """

    sequences: dict[str, list[int]]
    item_ids: list[str]
    rows: int
    dropped: dict[str, int] = field(default_factory=dict)


def _times(path, column: str, values):
    """A timestamp column as sortable numbers: numbers as they are (e.g. Unix seconds), else parsed dates."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return numbers.to_numpy(dtype=np.float64)
    try:
        try:
            dates = pd.to_datetime(values, errors="raise", utc=True)  # one format throughout (fast)
        except (ValueError, TypeError):
            dates = pd.to_datetime(values, errors="raise", format="mixed", utc=True)  # each value its own
    except (ValueError, TypeError) as error:
        bad = next(v for v in values if pd.isna(pd.to_datetime(v, errors="coerce", utc=True)))
        raise OwnDataError(f"{path}: column {column!r} (--timestamp-column) holds {bad!r}, which is neither a "
                           "number (e.g. Unix seconds) nor a date (e.g. 2024-03-01 or 2024-03-01T12:30:00): fix "
                           "that row") from error
    return dates.astype("int64").to_numpy(dtype=np.float64)


def read_interactions(path, user_column: str, item_column: str, rating_column: str | None = None,
                      timestamp_column: str | None = None, min_rating: float | None = None) -> Interactions:
    """A CSV of interactions -> ``Interactions`` (histories in time order, dense item ids and their map).

    Ids are kept as text, whatever they look like (``user-17``, ``A1B2``, ``42``). Each row is one
    interaction: a rating, a purchase, a view. ``timestamp_column`` orders each user's history
    (numbers or dates; without it, the file's row order); ``rating_column`` with ``min_rating``
    keeps only ratings at or above it (without ``min_rating``, every rated item counts, as chapter
    6.4's model counts every MovieLens rating). Rows with an empty user or item are dropped.
    Raises ``OwnDataError`` for a missing column, an empty file, a non-number rating, a timestamp
    that is neither a number nor a date, fewer than two distinct items, or no user with three
    interactions (the last two are held out to score the model).
    """
    import pandas as pd

    if min_rating is not None and rating_column is None:
        raise OwnDataError("--min-rating needs --rating-column (the column the threshold applies to)")
    frame = _read_csv(path, {"--user-column": user_column, "--item-column": item_column,
                             "--rating-column": rating_column, "--timestamp-column": timestamp_column})
    frame = frame.assign(_row=np.arange(len(frame)))
    users, items = frame[user_column].str.strip(), frame[item_column].str.strip()
    empty = (users == "") | (items == "")
    dropped = {"empty user or item": int(empty.sum())}
    frame = frame[~empty].assign(_user=users[~empty], _item=items[~empty])
    if rating_column is not None:
        ratings = pd.to_numeric(frame[rating_column], errors="coerce")
        if ratings.isna().any():
            bad = frame.loc[ratings.isna(), rating_column].iloc[0]
            line = int(frame.loc[ratings.isna(), "_row"].iloc[0]) + 2  # + header, 1-based
            raise OwnDataError(f"{path}: column {rating_column!r} (--rating-column) holds {bad!r} on line {line}, "
                               "not a number: fix it, or leave --rating-column out")
        if min_rating is not None:
            low = ratings < min_rating
            dropped[f"rating below {min_rating:g}"] = int(low.sum())
            frame = frame[~low]
    if frame.empty:
        raise OwnDataError(f"{path}: no interactions left after dropping {dropped}: check the columns chosen")
    order = ["_user", "_row"]
    if timestamp_column is not None:
        frame = frame.assign(_time=_times(path, timestamp_column, frame[timestamp_column]))
        order = ["_user", "_time", "_row"]
    frame = frame.sort_values(order, kind="stable")
    item_ids = sorted(frame["_item"].unique().tolist())
    if len(item_ids) < 2:
        raise OwnDataError(f"{path}: column {item_column!r} has one item only ({item_ids[0]!r}); a recommender "
                           "needs two or more items to choose from")
    dense = {item: i + 1 for i, item in enumerate(item_ids)}  # 0 is the padding id
    sequences = {str(user): [dense[item] for item in group]
                 for user, group in frame.groupby("_user", sort=True)["_item"]}
    if not any(len(history) >= 3 for history in sequences.values()):
        raise OwnDataError(f"{path}: no user has three or more interactions; the model holds out each user's last "
                           "two to score itself: add longer histories")
    return Interactions(sequences=sequences, item_ids=["", *item_ids], rows=len(frame), dropped=dropped)


# ---------------------------------------------------------------------------------------------
# A folder of images (the image classifier)
# ---------------------------------------------------------------------------------------------
@dataclass
class ImageFolder:
    """``pixels`` (N, 28, 28) uint8, ``labels`` (N,) ids into ``classes`` (the subfolder names, sorted),
    ``files`` (N,) paths relative to the folder, ``steps`` how often each conversion step was taken,
    ``digest`` one sha256 over every file's name and content."""

    pixels: np.ndarray
    labels: np.ndarray
    classes: list[str]
    files: list[str]
    steps: Counter
    digest: str


def _step_kind(step: str) -> str:
    """A conversion step without its figures ("padded 640x480 to 640x640 (...)" -> "padded"), to count them."""
    words = []
    for word in step.split(":")[0].split(" (")[0].split():
        if any(ch.isdigit() for ch in word):
            break
        words.append(word)
    return " ".join(words)


def read_image_folder(folder, min_per_class: int = MIN_PER_LABEL) -> ImageFolder:
    """``folder/<class name>/<image>`` -> ``ImageFolder``, each image converted by ``lm4f.vision.prepare_image``.

    Every file in a class folder must be an image Pillow reads (PNG, JPEG, WebP, GIF, BMP, TIFF ...;
    hidden files and ``Thumbs.db`` are skipped), of at most ``lm4f.vision.MAX_PIXELS`` pixels.
    Raises ``OwnDataError`` naming the folder or file: a missing folder, no class subfolders, one
    class only, a class with fewer than ``min_per_class`` images, an unreadable image.
    """
    from lm4f import vision

    folder = Path(folder)
    if not folder.is_dir():
        raise OwnDataError(f"{folder} is not a folder: give --image-folder a folder with one subfolder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not classes:
        extra = f" (it holds files such as {stray[0]!r}: move them into class subfolders)" if stray else ""
        raise OwnDataError(f"{folder} has no subfolders; put each class's images in a subfolder named after the "
                           f"class, e.g. {folder}/sneaker/1.jpg, {folder}/bag/1.jpg{extra}")
    if len(classes) < 2:
        raise OwnDataError(f"{folder} has one class subfolder only ({classes[0]!r}); a classifier needs two or more "
                           "classes: add a subfolder per class")
    pixels, labels, files, steps = [], [], [], Counter()
    digest = hashlib.sha256()
    for label, name in enumerate(classes):
        paths = sorted(p for p in (folder / name).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name not in SKIPPED_FILES)
        if len(paths) < min_per_class:
            raise OwnDataError(f"{folder / name} has {len(paths)} image(s); each class needs at least "
                               f"{min_per_class} (some go to validation and test): add images or remove the folder")
        for path in paths:
            try:
                image, opened, _ = vision.open_image(path, formats=None, name=str(path))
                with image:
                    array, prepared = vision.prepare_image(image)
            except vision.ImageError as error:
                raise OwnDataError(f"cannot use {path}: {error}") from error
            pixels.append(array)
            labels.append(label)
            relative = path.relative_to(folder).as_posix()
            files.append(relative)
            steps.update(_step_kind(step) for step in [*opened, *prepared])
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return ImageFolder(pixels=np.stack(pixels), labels=np.asarray(labels, dtype=np.int64), classes=classes,
                       files=files, steps=steps, digest=digest.hexdigest())


# ---------------------------------------------------------------------------------------------
# Example files, made from the course's data
# ---------------------------------------------------------------------------------------------
EXAMPLE_CLASSES = {"ankle-boot": 9, "bag": 8, "sneaker": 7, "trouser": 1}  # folder name: Fashion-MNIST class
EXAMPLE_IMAGES_PER_CLASS = 8
EXAMPLE_REVIEWS = 300
EXAMPLE_USERS = 40


def _example_photo(pixels: np.ndarray, index: int):
    """One Fashion-MNIST image dressed up as an upload: a size, colour mode and format that vary with ``index``.

    Returns ``(Pillow image, file suffix)``: 0, a dark product on a white 4:3 RGB JPEG; 1, an RGBA PNG
    with a transparent background; 2, a palette PNG; 3, a 16-bit greyscale PNG; 4, the 28x28 grey PNG
    as Fashion-MNIST stores it; 5, a dark-on-light greyscale JPEG in portrait.
    """
    from PIL import Image

    kind = index % 6
    scale = 4 + index % 5  # 112 to 224 pixels a side
    side = 28 * scale
    big = Image.fromarray(pixels, mode="L").resize((side, side), Image.Resampling.BICUBIC)
    if kind == 0:
        canvas = Image.new("L", (side * 4 // 3, side), 255)
        canvas.paste(Image.eval(big, lambda v: 255 - v), (side // 6, 0))
        return Image.merge("RGB", [canvas] * 3), ".jpg"
    if kind == 1:
        tinted = Image.merge("RGB", [big, big, Image.eval(big, lambda v: v // 2)])
        return Image.merge("RGBA", [*tinted.split(), big]), ".png"
    if kind == 2:
        return Image.merge("RGB", [big] * 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), ".png"
    if kind == 3:
        return Image.fromarray(np.asarray(big, dtype=np.uint16) * 257), ".png"
    if kind == 4:
        return Image.fromarray(pixels, mode="L"), ".png"
    canvas = Image.new("L", (side, side * 5 // 4), 255)
    canvas.paste(Image.eval(big, lambda v: 255 - v), (0, side // 8))
    return canvas, ".jpg"


def write_examples(folder="examples", seed: int = 0) -> dict[str, Path]:
    """Write three small example inputs from the course's data into ``folder``; return their paths.

    - ``reviews.csv``: 300 clothing reviews, columns ``review``, ``recommended`` (``yes``/``no``)
      and ``sentiment`` (``negative`` for 1-2 stars, ``neutral`` for 3, ``positive`` for 4-5);
    - ``ratings.csv``: the MovieLens-100K ratings of 40 users, columns ``customer`` (``user-17``),
      ``product`` (``film-3``), ``stars`` and ``rated_at`` (an ISO date and time);
    - ``images/<class>/``: 8 Fashion-MNIST test images of each of 4 classes, as JPEG and PNG files
      of several sizes and colour modes (RGB, RGBA, palette, 16-bit grey, dark on light).
    """
    import pandas as pd

    from lm4f import data
    from lm4f.nlp import LABEL, clean_reviews

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reviews, _ = clean_reviews(data.clothing_reviews())
    sample = reviews.sample(n=EXAMPLE_REVIEWS, random_state=seed).sort_values("row")
    stars = sample["Rating"].astype(int)
    pd.DataFrame({
        "review": sample["text"].to_numpy(),
        "recommended": np.where(sample[LABEL] == 1, "yes", "no"),
        "sentiment": np.select([stars <= 2, stars == 3], ["negative", "neutral"], "positive"),
    }).to_csv(folder / "reviews.csv", index=False)

    ratings = data.movielens_100k()["ratings"]
    chosen = ratings[ratings.user_id <= EXAMPLE_USERS]
    pd.DataFrame({
        "customer": "user-" + chosen["user_id"].astype(str),
        "product": "film-" + chosen["movie_id"].astype(str),
        "stars": chosen["rating"].to_numpy(),
        "rated_at": pd.to_datetime(chosen["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy(),
    }).to_csv(folder / "ratings.csv", index=False)

    pixels, labels = data.fashion_mnist("test")
    for name, label in EXAMPLE_CLASSES.items():
        target = folder / "images" / name
        target.mkdir(parents=True, exist_ok=True)
        for number, row in enumerate(np.flatnonzero(labels == label)[:EXAMPLE_IMAGES_PER_CLASS]):
            image, suffix = _example_photo(pixels[row], number)
            image.save(target / f"{name}-{number + 1}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return {"reviews": folder / "reviews.csv", "ratings": folder / "ratings.csv", "images": folder / "images"}


def main(argv: list[str] | None = None) -> int:
    """``python -m lm4f.own_data examples [FOLDER]``: write the example files (default folder ``examples``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "examples" or len(argv) > 2:
        print("usage: python -m lm4f.own_data examples [FOLDER]   (writes reviews.csv, ratings.csv and images/ "
              "from the course's data; FOLDER defaults to examples)", file=sys.stderr)
        return 2
    paths = write_examples(argv[1] if len(argv) > 1 else "examples")
    for name, path in paths.items():
        print(f"{name:8s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
