"""`python -m lm4f doctor`: OK on a good setup, a specific FAIL with its fix when something is wrong."""

import os
import subprocess
import sys
from pathlib import Path

import lm4f.data
from lm4f import doctor


def test_good_setup_is_all_ok(capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out.replace(", 0 FAIL", "")
    for needle in ("OK    python", "OK    package torch", "OK    data Fashion-MNIST / train-images-idx3-ubyte",
                   "OK    data MiniLM", "OK    device", "OK    bfloat16", "OK    threads"):
        assert needle in out


def test_package_at_another_version_or_missing_fails_with_the_pip_command(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\nnumpy==0.0.1  # wrong on purpose\nno-such-package-lm4f==1.0\n")
    numpy_check, missing_check = doctor.check_packages(requirements)
    assert not numpy_check.ok and "pinned 0.0.1" in numpy_check.detail
    assert "pip install 'numpy==0.0.1'" in numpy_check.fix
    assert not missing_check.ok and "not installed" in missing_check.detail
    requirements.write_text(f"numpy=={__import__('numpy').__version__}\n")
    assert doctor.check_packages(requirements)[0].ok


def test_other_python_fails_with_the_fix():
    check = doctor.check_python((3, 9, 1))
    assert not check.ok and "3.11" in check.fix
    assert doctor.check_python((3, 11, 7)).ok


def _data_copy_with_one_corrupt_file(tmp_path: Path) -> tuple[Path, str]:
    """A data folder of links to the real files, with one small file replaced by a corrupt copy."""
    real = lm4f.data.data_dir()
    for folder in ("fashion-mnist", "movielens-100k", "clothing-reviews"):
        (tmp_path / folder).mkdir()
        for file in (real / folder).iterdir():
            (tmp_path / folder / file.name).symlink_to(file)
    victim = tmp_path / "movielens-100k" / "MovieLens100k_users.parquet.brotli"
    content = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(content[: len(content) // 2])
    return tmp_path, victim.name


def test_corrupt_data_file_fails_naming_the_file_and_the_fetch_command(tmp_path, monkeypatch):
    folder, name = _data_copy_with_one_corrupt_file(tmp_path)
    monkeypatch.setenv("LM4F_DATA", str(folder))
    checks = {check.name: check for check in doctor.check_data()}
    bad = checks[f"data MovieLens-100K / {name}"]
    assert not bad.ok and "corrupt" in bad.detail and "python -m lm4f.data fetch" in bad.fix
    assert all(check.ok for key, check in checks.items() if key != bad.name)


def test_command_line_exits_1_and_prints_the_fix(tmp_path):
    folder, name = _data_copy_with_one_corrupt_file(tmp_path)
    (folder / "fashion-mnist" / "t10k-labels-idx1-ubyte").unlink()
    env = dict(os.environ, LM4F_DATA=str(folder))
    result = subprocess.run([sys.executable, "-m", "lm4f", "doctor"], env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL  data MovieLens-100K / {name}: present but corrupt" in result.stdout
    assert "FAIL  data Fashion-MNIST / t10k-labels-idx1-ubyte: missing" in result.stdout
    assert "fix: run `python -m lm4f.data fetch`" in result.stdout
    assert "2 FAIL" in result.stdout


def test_unknown_command_prints_usage():
    result = subprocess.run([sys.executable, "-m", "lm4f", "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2 and "doctor" in result.stderr
