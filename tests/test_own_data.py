"""Your own data in: ``python -m lm4f.train CASE`` on a CSV or an image folder, then served with your labels and ids.

The example files come from ``python -m lm4f.own_data examples`` (300 real reviews with renamed
columns, MovieLens ratings with ids turned into text such as "user-17"/"film-3", Fashion-MNIST test
images saved as JPEG and PNG of several sizes and colour modes). Each case is trained with the exact
command the site's "Use your own data" page shows (run in-process, at the CI size: seconds on these
small files), served by the serve command's app and called through FastAPI's TestClient. The errors
a user can cause (a missing column, an empty file, one label only, an unreadable image) are checked
for a message that names the file and the fix.
"""

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lm4f import own_data, serve, train, vision
from lm4f.saved_models import open_model

PAGE = Path(__file__).resolve().parents[1] / "site" / "workshop" / "own-data.md"

# The commands of the "Use your own data" page, run here exactly as written there (from the same folder).
EXAMPLES = "python -m lm4f.own_data examples"
TRAIN = {
    "reviews": "python -m lm4f.train reviews --csv examples/reviews.csv --text-column review --label-column sentiment",
    "reviews-yes-no": "python -m lm4f.train reviews --csv examples/reviews.csv --text-column review "
                      "--label-column recommended --models models-yes-no",
    "movies": "python -m lm4f.train movies --ratings-csv examples/ratings.csv --user-column customer "
              "--item-column product --rating-column stars --timestamp-column rated_at",
    "images": "python -m lm4f.train images --image-folder examples/images",
}
SERVE = {
    "reviews": "python -m lm4f.serve reviews --model models/reviews",
    "reviews-yes-no": "python -m lm4f.serve reviews --model models-yes-no/reviews",
    "movies": "python -m lm4f.serve movies --model models/movies",
    "images": "python -m lm4f.serve images --model models/images",
}


def _module_args(command: str, module: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", module], command
    return words[3:]


def _client(name: str) -> TestClient:
    app, _ = serve.app_from_argv(_module_args(SERVE[name], "lm4f.serve"))
    return TestClient(app)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the example files, where the page's commands are run (the working folder meanwhile)."""
    folder = tmp_path_factory.mktemp("own-data")
    before = Path.cwd()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LM4F_MODELS", raising=False)
        os.chdir(folder)
        try:
            assert own_data.main(_module_args(EXAMPLES, "lm4f.own_data")) == 0
            yield folder
        finally:
            os.chdir(before)


@pytest.fixture(scope="module")
def trained(workspace):
    """Each case trained by its command; ``{name: SavedModel}``."""
    saved = {}
    for name, command in TRAIN.items():
        assert train.main(_module_args(command, "lm4f.train")) == 0, command
        case = name.split("-")[0]
        models = "models-yes-no" if name == "reviews-yes-no" else "models"
        saved[name] = open_model(workspace / models / case, case)
        assert saved[name].metadata["rebuild"] == command  # the saved model says how to make it again
    return saved


def test_the_page_shows_exactly_the_commands_tested():
    page = PAGE.read_text()
    for command in [EXAMPLES, *TRAIN.values(), *SERVE.values()]:
        assert command in page, f"{command!r} is not on {PAGE.name}"


def test_the_example_files(workspace):
    reviews = pd.read_csv(workspace / "examples" / "reviews.csv")
    assert list(reviews.columns) == ["review", "recommended", "sentiment"] and len(reviews) == own_data.EXAMPLE_REVIEWS
    assert set(reviews.recommended) == {"yes", "no"} and set(reviews.sentiment) == {"negative", "neutral", "positive"}
    ratings = pd.read_csv(workspace / "examples" / "ratings.csv")
    assert ratings.customer.str.match(r"^user-\d+$").all() and ratings["product"].str.match(r"^film-\d+$").all()
    images = sorted(p.relative_to(workspace / "examples" / "images").parts[0]
                    for p in (workspace / "examples" / "images").rglob("*.*"))
    assert sorted(set(images)) == sorted(own_data.EXAMPLE_CLASSES)


# ---------------------------------------------------------------------------------------------
# The round trips: file -> train -> saved model -> serve -> your labels and ids back
# ---------------------------------------------------------------------------------------------
def test_reviews_with_three_labels_of_your_own(trained):
    saved = trained["reviews"]
    assert saved.config["labels"] == ["negative", "neutral", "positive"]
    assert saved.metadata["data"] == {"own/reviews.csv": own_data.file_digest("examples/reviews.csv")}
    assert saved.metadata["training"]["rows"] == {"train": 240, "validation": 30, "test": 30}
    metrics = saved.metadata["metrics"]
    assert 0 <= metrics["macro_f1"] <= 1 and np.array(metrics["confusion"]).sum() == 30
    with _client("reviews") as client:
        assert client.get("/health").json()["labels"] == ["negative", "neutral", "positive"]
        answer = client.post("/classify", json={"text": "Lovely soft fabric, fits perfectly, I wear it every day."})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"label", "probabilities"}  # no threshold: the most probable of three labels wins
        assert list(body["probabilities"]) == saved.config["labels"]
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-3
        assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
        assert client.post("/ask", json={"question": "Does it run small?"}).status_code == 503  # no review index


def test_reviews_with_yes_no_labels_use_a_tuned_threshold(trained):
    saved = trained["reviews-yes-no"]
    assert saved.config["labels"] == ["no", "yes"]
    assert saved.metadata["metrics"]["threshold"] == saved.config["threshold"]
    with _client("reviews-yes-no") as client:
        for text in ("Terrible quality, it fell apart after one wash. Returned it.",
                     "Beautiful dress, true to size, I get compliments every time."):
            body = client.post("/classify", json={"text": text}).json()
            assert set(body) == {"label", "probabilities", "threshold"}
            assert body["label"] == ("yes" if body["probabilities"]["yes"] >= body["threshold"] else "no")


def test_movies_with_string_ids_in_and_out(trained, workspace):
    saved = trained["movies"]
    assert saved.config["ids"] == "string" and "user-7" in saved.config["known_users"]
    ratings = pd.read_csv(workspace / "examples" / "ratings.csv")
    ratings = ratings.assign(row=range(len(ratings)), when=pd.to_datetime(ratings.rated_at))
    watched = ratings[ratings.customer == "user-7"].sort_values(["when", "row"], kind="stable")["product"].tolist()
    with _client("movies") as client:
        body = client.post("/recommend", json={"user_id": "user-7", "k": 5}).json()
        assert body["user_id"] == "user-7" and body["strategy"] == "transformer"
        ids = [item["movie_id"] for item in body["items"]]
        assert len(ids) == 5 and all(i.startswith("film-") for i in ids) and not set(ids) & set(watched)
        assert [item["title"] for item in body["items"]] == ids  # no titles in the file: the id is the title
        history = watched[:3]
        body = client.post("/recommend", json={"history": history, "k": 4}).json()
        assert body["user_id"] is None and len(body["items"]) == 4
        assert not {item["movie_id"] for item in body["items"]} & set(history)
        assert all(item["movie_id"].startswith("film-") for item in client.get("/popular?k=3").json()["items"])
        unknown = client.post("/recommend", json={"user_id": "user-999"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_user"
        assert unknown.json()["detail"].startswith("Unknown user_id 'user-999'. This model knows 40 users, e.g. ")
        number = client.post("/recommend", json={"user_id": 7})  # taken as the text "7": not one of the ids
        assert number.status_code == 404 and "Unknown user_id '7'" in number.json()["detail"]
        bad_item = client.post("/recommend", json={"history": ["film-1", "film-99999"]})
        assert bad_item.status_code == 422 and bad_item.json()["code"] == "unknown_item"
        assert "Unknown item ids in history: ['film-99999']" in bad_item.json()["detail"]
        wrong = client.post("/recommend", json={"history": [1.5]})
        assert wrong.status_code == 422 and '"user_id": "user-1"' in wrong.json()["detail"]  # an example in its ids


def test_the_history_the_model_keeps_is_the_file_in_time_order(trained, workspace):
    from lm4f.recsys import load_recommender

    recommender = load_recommender(trained["movies"])
    ratings = pd.read_csv(workspace / "examples" / "ratings.csv")
    ratings = ratings.assign(row=range(len(ratings)), when=pd.to_datetime(ratings.rated_at))
    for user in ("user-1", "user-23"):
        expected = ratings[ratings.customer == user].sort_values(["when", "row"], kind="stable")["product"].tolist()
        assert [recommender.to_external(i) for i in recommender.histories[user]] == expected
    assert recommender.to_internal(["film-1"]) == [recommender.item_ids.index("film-1")]


def test_images_from_a_folder_keep_their_class_names(trained, workspace):
    saved = trained["images"]
    classes = sorted(own_data.EXAMPLE_CLASSES)
    assert saved.config["classes"] == classes
    conversions = saved.metadata["training"]["conversions"]
    assert conversions["inverted"] == 12 and conversions["scaled"] == 4  # the dark-on-light and 16-bit files
    with _client("images") as client:
        assert client.get("/health").json()["classes"] == classes
        photo = workspace / "examples" / "images" / "bag" / "bag-1.jpg"
        answer = client.post("/predict/image", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["label"] in classes and list(body["probabilities"]) == classes
        assert any(step.startswith("inverted: light background") for step in body["preprocessing"])
        assert client.post("/predict", json={"pixels": [[0] * 28] * 28}).json()["label"] in classes


# ---------------------------------------------------------------------------------------------
# Errors a user can cause: the message names the file, column or image and the fix
# ---------------------------------------------------------------------------------------------
def _fails(args: list[str], capsys) -> str:
    assert train.main(args) == 1
    return capsys.readouterr().err


def test_csv_problems_are_named(workspace, tmp_path, capsys):
    reviews = "examples/reviews.csv"
    error = _fails(["reviews", "--csv", reviews, "--text-column", "text", "--label-column", "sentiment",
                    "--models", str(tmp_path)], capsys)
    assert "examples/reviews.csv has no column 'text' (given by --text-column); its columns are: 'review'" in error
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty.csv is empty: it needs a header row" in _fails(
        ["reviews", "--csv", str(empty), "--text-column", "review", "--label-column", "label"], capsys)
    header = tmp_path / "header.csv"
    header.write_text("review,label\n")
    assert "header.csv has a header but no rows" in _fails(
        ["reviews", "--csv", str(header), "--text-column", "review", "--label-column", "label"], capsys)
    one = tmp_path / "one.csv"
    pd.DataFrame({"review": [f"text number {i}" for i in range(20)], "label": ["good"] * 20}).to_csv(one, index=False)
    assert "column 'label' has one value only ('good' in 20 rows); a classifier needs two or more labels" in _fails(
        ["reviews", "--csv", str(one), "--text-column", "review", "--label-column", "label"], capsys)
    rare = tmp_path / "rare.csv"
    pd.DataFrame({"review": [f"text number {i}" for i in range(22)],
                  "label": ["good"] * 20 + ["bad"] * 2}).to_csv(rare, index=False)
    assert "too few rows for label(s) 'bad' (2 rows)" in _fails(
        ["reviews", "--csv", str(rare), "--text-column", "review", "--label-column", "label"], capsys)
    assert "missing.csv does not exist" in _fails(
        ["reviews", "--csv", "missing.csv", "--text-column", "review", "--label-column", "label"], capsys)
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"who": ["a", "a", "a", "b"], "what": ["x", "y", "z", "x"],
                  "when": ["2024-01-01", "2024-01-02", "last tuesday", "2024-01-01"]}).to_csv(ratings, index=False)
    assert "column 'when' (--timestamp-column) holds 'last tuesday', which is neither a number" in _fails(
        ["movies", "--ratings-csv", str(ratings), "--user-column", "who", "--item-column", "what",
         "--timestamp-column", "when"], capsys)
    assert "has no column 'user' (given by --user-column); its columns are: 'who', 'what', 'when'" in _fails(
        ["movies", "--ratings-csv", str(ratings), "--user-column", "user", "--item-column", "what"], capsys)
    assert not list(tmp_path.glob("reviews")) and not list(tmp_path.glob("movies"))  # nothing half-saved


def test_image_folder_problems_are_named(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "shoe").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (250, 250, 250)).save(folder / "shoe" / f"{i}.png")
    assert "has one class subfolder only ('shoe'); a classifier needs two or more classes" in _fails(
        ["images", "--image-folder", str(folder), "--models", str(tmp_path)], capsys)
    (folder / "bag").mkdir()
    for i in range(4):
        Image.new("L", (30, 30), 10).save(folder / "bag" / f"{i}.jpg")
    assert f"{folder / 'bag'} has 4 image(s); each class needs at least 5" in _fails(
        ["images", "--image-folder", str(folder)], capsys)
    (folder / "bag" / "notes.jpg").write_text("not an image")
    error = _fails(["images", "--image-folder", str(folder)], capsys)
    assert f"cannot use {folder / 'bag' / 'notes.jpg'}: " in error and "not an image this reader recognises" in error
    (folder / "bag" / "notes.jpg").write_bytes((folder / "bag" / "0.jpg").read_bytes()[:60])  # a cut-off JPEG
    assert f"cannot use {folder / 'bag' / 'notes.jpg'}: " in _fails(["images", "--image-folder", str(folder)], capsys)
    assert "is not a folder" in _fails(["images", "--image-folder", str(tmp_path / "absent")], capsys)


@pytest.mark.parametrize("args, message", [
    (["movies", "--csv", "x.csv"], "--csv is an option of the reviews case, not of movies"),
    (["reviews", "--csv", "x.csv", "--text-column", "review"], "--csv needs --label-column"),
    (["reviews", "--text-column", "review"], "--text-column need(s) --csv"),
    (["images", "--user-column", "who"], "--user-column is an option of the movies case, not of images"),
])
def test_options_that_do_not_fit_the_case_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main(args)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_conversion_of_the_folder_is_the_apis(workspace):
    """The folder reader and /predict/image use one function: the same file gives the same array."""
    path = workspace / "examples" / "images" / "sneaker" / "sneaker-4.png"  # a 16-bit greyscale PNG
    folder = own_data.read_image_folder(workspace / "examples" / "images")
    image, _, header = vision.open_image(path.read_bytes())
    assert header["mode"] == "I;16"
    array, steps = vision.prepare_image(image)
    assert np.array_equal(folder.pixels[folder.files.index("sneaker/sneaker-4.png")], array)
    assert json.dumps(steps).count("16-bit") == 1


def test_the_runbook_commands_are_real():
    """Each command of the workshop runbook names a case, option, file or make target that exists."""
    import re

    root = PAGE.parents[2]
    page = (PAGE.parent / "runbook.md").read_text()
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", page, re.S) for line in block.splitlines()]
    assert len(commands) >= 10
    makefile = (root / "Makefile").read_text()
    for command in commands:
        words = shlex.split(command)
        if words[:3] == ["python", "-m", "lm4f.serve"]:
            serve.parse(words[3:])
        elif words[:3] == ["python", "-m", "lm4f.train"]:
            assert words[3] in train.TRAINERS
        elif words[:2] == ["python", "benchmarks/run.py"]:
            assert all((root / "benchmarks" / f"bench_{name}.py").is_file() for name in words[2:])
        elif words[0] == "podman":
            assert (root / "Containerfile").is_file()
        elif words[0] == "make":
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), command
        else:
            assert words[0] == "curl" or words[:3] == ["python", "-m", "lm4f.own_data"], command
