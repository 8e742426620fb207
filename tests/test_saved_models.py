"""Saved, versioned models (lm4f.saved_models): what a version folder holds, and every way loading refuses one.

A real (small) image classifier is trained for a few seconds and saved in a temporary models folder;
no test reads the repository's models/ folder, which a clean clone does not have.
"""

import json
import re
import shutil

import pytest
import torch

import lm4f
from lm4f import data, vision
from lm4f.saved_models import (CONFIG, FORMAT, METADATA, ModelFileError, file_checksums, open_model, save_model,
                               verify_files, versions_in)


@pytest.fixture(scope="module")
def trained():
    images, labels = data.fashion_mnist("test")
    lm4f.seed_everything(0)
    model = vision.softmax_regression()
    vision.train_classifier(model, vision.to_tensor(images[:3000]), torch.from_numpy(labels[:3000]), epochs=1, lr=1e-2)
    accuracy = vision.classifier_accuracy(model, vision.to_tensor(images[3000:4000]),
                                          torch.from_numpy(labels[3000:4000]))
    return model, accuracy


def _save(model, accuracy, root):
    return save_model("images", lambda folder: vision.save_classifier(folder, model), root=root,
                      metrics={"split": "test (1,000 images)", "accuracy": accuracy},
                      data={f"fashion-mnist/{n}": d for n, d in data.FASHION_MNIST_FILES.items()},
                      training={"epochs": 1})


@pytest.fixture()
def saved(trained, tmp_path):
    return _save(*trained, tmp_path / "models")


def test_a_version_folder_holds_files_config_and_metadata(saved, trained, tmp_path):
    root = tmp_path / "models"
    assert saved.folder == root / "images" / "v1" and saved.version == "v1" and saved.case == "images"
    assert sorted(p.name for p in saved.folder.iterdir()) == [CONFIG, METADATA, "model.pt2"]
    metadata = json.loads((saved.folder / METADATA).read_text())
    assert metadata["format"] == FORMAT and metadata["size"] == lm4f.SIZE
    assert metadata["files"] == file_checksums(saved.folder)  # every file but metadata.json, sha256 and bytes
    assert set(metadata["files"]) == {CONFIG, "model.pt2"}
    test_images = "t10k-images-idx3-ubyte"
    assert metadata["data"][f"fashion-mnist/{test_images}"] == data.FASHION_MNIST_FILES[test_images]
    assert metadata["metrics"]["accuracy"] == trained[1] > 0.6
    assert metadata["versions"]["torch"] == torch.__version__.split("+")[0] and metadata["versions"]["python"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", metadata["created_at"])
    assert metadata["git"] is None or re.fullmatch(r"[0-9a-f]{40}", metadata["git"]["commit"])
    assert metadata["rebuild"] == f"python -m lm4f.train images --models {root}"
    assert saved.config["classes"] == vision.CLASSES and saved.config["mean"] == vision.MEAN
    assert saved.about()["version"] == "v1" and saved.about()["metrics"]["accuracy"] == trained[1]


def test_versions_count_up_and_the_case_folder_opens_the_newest(saved, trained, tmp_path):
    second = _save(*trained, tmp_path / "models")
    assert second.version == "v2" and versions_in(tmp_path / "models" / "images") == [saved.folder, second.folder]
    assert open_model(tmp_path / "models" / "images", "images").folder == second.folder
    assert open_model(saved.folder, "images").version == "v1"  # an older version stays servable
    model, classes = vision.load_classifier(open_model(second.folder, "images"))
    images = vision.to_tensor(data.fashion_mnist("test")[0][:64])
    with torch.no_grad():
        assert torch.equal(model(images), trained[0](images)) and classes == vision.CLASSES


def _refusal(path, case="images"):
    with pytest.raises(ModelFileError) as caught:
        open_model(path, case)
    return str(caught.value)


def test_a_missing_truncated_or_foreign_file_is_named_with_the_rebuild_command(saved, trained, tmp_path):
    rebuild = f"python -m lm4f.train images --models {tmp_path / 'models'}"
    weights = saved.folder / "model.pt2"
    original = weights.read_bytes()

    weights.write_bytes(original[: len(original) // 2])  # a copy cut short
    message = _refusal(saved.folder)
    assert f"{weights} is corrupt or truncated: it has {len(original) // 2:,} bytes" in message and rebuild in message

    other = tmp_path / "other.pt2"
    vision.export_model(vision.softmax_regression(), other)  # the same kind of file, another model: same size
    assert other.stat().st_size == len(original)
    shutil.copy(other, weights)
    message = _refusal(saved.folder)
    assert f"{weights} is corrupt or truncated: its sha256 differs" in message and "foreign" in message
    assert rebuild in message

    weights.unlink()
    assert f"{weights} is missing" in _refusal(saved.folder)
    weights.write_bytes(original)
    assert open_model(saved.folder, "images").version == "v1"  # the right bytes again: it loads


def test_a_folder_without_metadata_of_another_case_or_format_is_refused(saved, tmp_path):
    assert "there is no folder" in _refusal(tmp_path / "nowhere")
    assert "python -m lm4f.train images" in _refusal(tmp_path / "nowhere")
    message = _refusal(saved.folder, case="movies")
    assert f"{saved.folder / METADATA} describes a 'images' model, not a 'movies' one" in message
    assert "python -m lm4f.train movies" in message
    metadata_path = saved.folder / METADATA
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "format": "lm4f-model/0"}))
    assert "has format 'lm4f-model/0'" in _refusal(saved.folder)
    metadata_path.write_text("{not json")
    assert f"{metadata_path} is not a model metadata file" in _refusal(saved.folder)
    metadata_path.unlink()
    assert f"{metadata_path} is missing" in _refusal(saved.folder)
    empty = tmp_path / "models" / "empty"
    empty.mkdir()
    assert f"{empty / METADATA} is missing" in _refusal(empty)


def test_a_config_that_does_not_fit_this_library_is_refused(saved):
    config_path = saved.folder / CONFIG
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "mean": 0.5}))
    metadata_path = saved.folder / METADATA  # re-sign the changed config, as a foreign tool would
    metadata = json.loads(metadata_path.read_text())
    metadata["files"] = file_checksums(saved.folder)
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ModelFileError, match="normalised with mean 0.5") as caught:
        vision.load_classifier(open_model(saved.folder, "images"))
    assert "config.json" in str(caught.value) and "python -m lm4f.train images" in str(caught.value)


def test_verify_files_refuses_paths_outside_the_folder(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="outside its folder"):
        verify_files(tmp_path, {"../a.bin": "0" * 64}, lambda path, what: ValueError(f"{path} {what}"))
    verify_files(tmp_path, file_checksums(tmp_path), lambda path, what: ValueError(f"{path} {what}"))
