#!/usr/bin/env bash
# Build the serving image (Containerfile) with podman and test it, with no container registry in reach.
#
#   .ci/container.sh build    # `make container`: the image $IMAGE (default lm4f-serve:latest)
#   .ci/container.sh test     # `make test-container`: build, then run one container per case, offline, and check
#                             # every route over loopback (.ci/container_check.py); containers are always removed
#
# Settings (environment):
#   CONTAINER_CASES   cases to put in the image and test (default "images reviews"); each case's newest saved
#                     version under models/ is used; when none verifies, a small one (LM4F_SIZE=smoke) is trained
#                     into build/container/trained for this test only
#   IMAGE             image name (default lm4f-serve:latest)
#   BASE_IMAGE        default localhost/debian-min:bookworm, made here with debootstrap when missing (cached in
#                     podman's storage); any image with Python 3.11 or a bare Debian bookworm works
#   TORCH_INDEX_URL   where the torch wheel comes from; default: PyTorch's CPU-only index when it answers, else
#                     PyPI's (CUDA) build: 3.0 GB of wheels and a 5.8 GB image (the CPU-only one, not measured
#                     here, lacks the 3.2 GB of NVIDIA libraries)
#   DEBIAN_MIRROR     for debootstrap (default: the mirror apt uses on this machine)
#   READY_TIMEOUT_S   how long a container may take to become ready (default 240)
#
# Root installs podman, runc and debootstrap when missing (apt); anyone else gets the command to run. podman reads
# .ci/containers.conf (runc, explicit ulimits; see that file). Every wait is bounded; each phase prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CONTAINERS_CONF="$ROOT/.ci/containers.conf"

ACTION=${1:-test}
CASES=${CONTAINER_CASES:-images reviews}
IMAGE=${IMAGE:-lm4f-serve:latest}
LOCAL_BASE=localhost/debian-min:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-240}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
STAGE=build/container
WHEELS=$STAGE/wheels
MODELS_STAGE=$STAGE/models
TRAIN_TIMEOUT_S=1800
BUILD_TIMEOUT_S=3600

STARTED=$SECONDS
PHASE_STARTED=$SECONDS
phase() {  # phase NAME: print the time the previous phase took, then start NAME
  echo "[container] ${1} (at $((SECONDS - STARTED)) s)"
  PHASE_STARTED=$SECONDS
}
took() { echo "[container]   took $((SECONDS - PHASE_STARTED)) s"; }
die() { echo "[container] error: $*" >&2; exit 1; }

case $ACTION in build|test) ;; *) echo "usage: $0 build|test" >&2; exit 2;; esac
[ -x "$PYTHON" ] || die "$PYTHON is missing: run \`make setup\` first (the models are trained and checked with it)"

# --- 1. the tools -------------------------------------------------------------------------------------------
phase "tools: podman, runc, debootstrap"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    die "missing ${missing[*]}; install them with: sudo apt-get install -y podman runc debootstrap"
  fi
  timeout 300 apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q podman runc debootstrap >/dev/null
fi
[ "$(id -u)" = 0 ] || echo "[container] note: not root; podman runs rootless (tested as root only)"
podman --version
took

# --- 2. the serving pins are requirements.txt's -------------------------------------------------------------
"$PYTHON" - <<'EOF'
import re, sys
def pins(path):
    found = {}
    for line in open(path):
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found
main, serve = pins("requirements.txt"), pins("requirements-serve.txt")
differ = [f"{name}: requirements-serve.txt {version}, requirements.txt {main[name]}"
          for name, version in serve.items() if name in main and main[name] != version]
if differ:
    sys.exit("[container] error: requirements-serve.txt pins differ from requirements.txt's:\n  " + "\n  ".join(differ))
EOF

# --- 3. the base image: a minimal Debian bookworm, made once ------------------------------------------------
phase "base image $BASE_IMAGE"
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! podman image exists "$LOCAL_BASE"; then
  mirror=${DEBIAN_MIRROR:-}
  if [ -z "$mirror" ]; then  # the first Debian archive apt uses here (not its security archive)
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -oE '^(URIs: |deb )https?://[^ ]+/debian/?$|^(URIs: |deb )https?://[^ ]+/debian/? ' \
      | head -1 | sed -E 's/^(URIs: |deb )//; s/ +$//') || true
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /tmp/lm4f-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "[container]   debootstrap --variant=minbase bookworm from $mirror"
  timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log"; die "debootstrap failed (log above)"; }
  tar -C "$rootfs" -c . | timeout 300 podman import -q - "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  trap - EXIT
else
  echo "[container]   present"
fi
took

# --- 4. the models: the newest saved version of each case, trained when none verifies -----------------------
phase "models: $CASES"
rm -rf "$MODELS_STAGE"
mkdir -p "$MODELS_STAGE"
for case in $CASES; do
  newest() {
    "$PYTHON" -c "import sys; from lm4f.saved_models import models_dir, open_model
try: print(open_model(models_dir() / sys.argv[1], sys.argv[1]).folder)
except Exception as error: sys.exit(str(error))" "$case"
  }
  if ! folder=$(newest 2>/dev/null); then
    # No saved model of yours: train a small one for this test only (the test checks serving, not accuracy),
    # outside models/ so that `make serve` never picks it up.
    trained="build/container/trained"
    echo "[container]   no saved $case model verifies: training a small one for this test" \
         "(LM4F_SIZE=smoke python -m lm4f.train $case, into $trained)"
    LM4F_MODELS="$trained" LM4F_SIZE=smoke OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout "$TRAIN_TIMEOUT_S" \
      "$PYTHON" -m lm4f.train "$case"
    folder=$(LM4F_MODELS="$trained" newest)
  fi
  mkdir -p "$MODELS_STAGE/$case"
  cp -a "$folder" "$MODELS_STAGE/$case/"
  echo "[container]   $case: $folder"
done
took

# --- 5. the wheels, downloaded once on this machine (pip's cache cannot help; see the Containerfile) ---------
phase "wheels -> $WHEELS"
mkdir -p "$WHEELS"
torch_pin=$(grep -E '^torch==' requirements-serve.txt)
if [ -z "${TORCH_INDEX_URL+set}" ]; then
  TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
  if ! timeout 20 "$PYTHON" -c "import urllib.request as r; r.urlopen('$TORCH_INDEX_URL/torch/', timeout=15)" \
      2>/dev/null; then
    echo "[container]   $TORCH_INDEX_URL does not answer: torch comes from PyPI (the CUDA build, about 4 GB more)"
    TORCH_INDEX_URL=
  fi
fi
# The folder is complete for these pins and this torch source when its stamp says so; else it is made again.
stamp="$(sha256sum requirements-serve.txt | cut -c1-64) torch from ${TORCH_INDEX_URL:-PyPI}"
if [ "$(cat "$WHEELS/.complete" 2>/dev/null)" = "$stamp" ]; then
  echo "[container]   present (same pins)"
else
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"  # exactly the resolved set: the build installs every file in it
  pip_download() { timeout 1800 "$PYTHON" -m pip download -q --only-binary=:all: --dest "$WHEELS" "$@"; }
  if [ -n "$TORCH_INDEX_URL" ]; then
    pip_download --index-url "$TORCH_INDEX_URL" "$torch_pin"
  fi
  pip_download --find-links "$WHEELS" -r requirements-serve.txt
  echo "$stamp" > "$WHEELS/.complete"
fi
echo "[container]   $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1); torch: $(ls "$WHEELS" | grep '^torch-')"
took

# --- 6. the image -------------------------------------------------------------------------------------------
phase "podman build $IMAGE"
timeout "$BUILD_TIMEOUT_S" podman build --format docker -f Containerfile -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg MODELS="$MODELS_STAGE" \
  --build-arg WHEELS=/wheels -v "$ROOT/$WHEELS:/wheels:ro" . \
  | grep --line-buffered -vE '^(Copying (blob|config)|Writing manifest|Storing signatures|Getting image source)' \
  | while IFS= read -r line; do printf '[%4d s] %s\n' $((SECONDS - PHASE_STARTED)) "${line:0:200}"; done
timeout 300 podman image prune -f >/dev/null  # earlier builds' layers (about 6 GB each); this build's cache stays
echo "[container]   $IMAGE: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"
took
[ "$ACTION" = build ] && { echo "[container] built $IMAGE in $((SECONDS - STARTED)) s"; exit 0; }

# --- 7. run each case offline and check its routes over loopback --------------------------------------------
# As root, each container runs with no network at all (--network none: only its own loopback), which proves it
# needs nothing from outside, and the checks run on this machine inside the container's network namespace
# (nsenter -n), so they reach the server on the container's 127.0.0.1:8000. Otherwise (rootless), the port is
# published on this machine's 127.0.0.1 over podman's default network, which does not prove the offline start.
# The HEALTHCHECK is run once by hand (podman healthcheck run): its timer needs systemd, which CI machines lack
# (podman run says so on stderr, which is shown only when the run fails).
phase "run and check: $CASES"
if [ -z "${CONTAINER_NETWORK:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v nsenter >/dev/null; then CONTAINER_NETWORK=none; else CONTAINER_NETWORK=publish; fi
fi
CONTAINERS=()
cleanup() {
  for name in "${CONTAINERS[@]}"; do timeout 60 podman rm -f -t 5 "$name" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
declare -A URLS
for case in $CASES; do
  name=lm4f-test-$case-$$
  CONTAINERS+=("$name")
  if [ "$CONTAINER_NETWORK" = none ]; then
    timeout 60 podman run -d --name "$name" --health-interval disable --network none "$IMAGE" "$case" \
      >/dev/null 2>"$STAGE/run.err" || { cat "$STAGE/run.err"; die "podman run failed"; }
    URLS[$case]=http://127.0.0.1:8000
  else
    port=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    timeout 60 podman run -d --name "$name" --health-interval disable -p "127.0.0.1:$port:8000" "$IMAGE" "$case" \
      >/dev/null 2>"$STAGE/run.err" || { cat "$STAGE/run.err"; die "podman run failed"; }
    URLS[$case]=http://127.0.0.1:$port
  fi
done
echo "[container]   network: $CONTAINER_NETWORK"
failed=0
for case in $CASES; do
  name=lm4f-test-$case-$$
  model=$(ls -d "$MODELS_STAGE/$case"/v*)
  enter=()
  [ "$CONTAINER_NETWORK" = none ] && enter=(nsenter -t "$(podman inspect -f '{{.State.Pid}}' "$name")" -n)
  if ! timeout $((2 * READY_TIMEOUT_S + 300)) "${enter[@]}" env OMP_NUM_THREADS=1 "$PYTHON" .ci/container_check.py \
      "$case" "${URLS[$case]}" "$model" --ready-timeout "$READY_TIMEOUT_S"; then
    failed=1
  fi
  user=$(timeout 30 podman exec "$name" id -u)
  [ "$user" != 0 ] && echo "  ok  runs as uid $user, not root" || { echo "FAIL runs as root" >&2; failed=1; }
  timeout 60 podman healthcheck run "$name" >/dev/null 2>&1 && echo "  ok  HEALTHCHECK passes" \
    || { echo "FAIL HEALTHCHECK" >&2; failed=1; }
  logs=$(timeout 30 podman logs "$name" 2>&1)
  if grep -q '"route": *"/' <<<"$logs"; then echo "  ok  one JSON log line per request on stdout"
  else echo "FAIL no JSON request log line" >&2; failed=1; fi
  if [ $failed = 1 ]; then echo "--- podman logs $name (last 40 lines) ---"; tail -40 <<<"$logs"; break; fi
done
took
[ $failed = 0 ] || die "container test failed"
echo "[container] passed: $CASES served from $IMAGE in $((SECONDS - STARTED)) s"
