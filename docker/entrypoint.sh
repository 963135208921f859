#!/usr/bin/env bash
# The steps behind `make run` and `docker compose up`, in one place so the two cannot drift.
#
#   entrypoint.sh run       install if needed, prepare, then serve (make run)
#   entrypoint.sh prepare   get Fashion-MNIST, train the default model if no weights, build the gallery if no index
#   entrypoint.sh serve     serve ALEXNET_WEIGHTS with the index in ALEXNET_INDEX_DIR
#   entrypoint.sh install   create .venv and install the project (skipped when `alexnet` is already on PATH)
#   entrypoint.sh alexnet ARGS...
#                           any `alexnet` command (`docker compose run --rm api alexnet model list`); in the image,
#                           docker/alexnet sets ALEXNET_INDEX_DIR as `serve` does
#
# Settings (environment): ALEXNET_DATA_DIR (default data), ALEXNET_WEIGHTS (default
# $ALEXNET_DATA_DIR/weights/fashion-mnist.safetensors), ALEXNET_INDEX_DIR (default
# $ALEXNET_DATA_DIR/index/<first 12 hex of the weights hash>), ALEXNET_RECIPE (default fashion-mnist),
# ALEXNET_TRAIN_ARGS (extra `alexnet train` options), FASHION_MNIST_DIR (where the IDX files are),
# ALEXNET_STORE_URL (the gallery in PostgreSQL instead of SQLite in the index directory),
# ALEXNET_GALLERY (what the gallery is built from) and ALEXNET_INDEX_ARGS (extra `alexnet index build` options),
# and every ALEXNET_* service setting (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${ALEXNET_DATA_DIR:-data}"
DEFAULT_WEIGHTS="$DATA_DIR/weights/fashion-mnist.safetensors"
export ALEXNET_WEIGHTS="${ALEXNET_WEIGHTS:-$DEFAULT_WEIGHTS}"
FMNIST_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"

if command -v alexnet >/dev/null 2>&1 && [ ! -x .venv/bin/alexnet ]; then
  ALEXNET=(alexnet)
else
  ALEXNET=(.venv/bin/alexnet)
fi

say() { printf '\n==> %s\n' "$*"; }
now() { date +%s; }

install() {
  if [ "${ALEXNET[0]}" = alexnet ]; then return 0; fi
  if [ -f ".venv/.installed-${EXTRAS:-}" ] && [ ".venv/.installed-${EXTRAS:-}" -nt pyproject.toml ]; then return 0; fi
  say "installing into .venv (first run only)"
  make --no-print-directory install EXTRAS="${EXTRAS:-}"
}

ensure_fashion_mnist() {
  local f missing=0
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -e "$FMNIST_DIR/$f.gz" ] || [ -e "$FMNIST_DIR/$f" ] || missing=1
  done
  [ $missing = 0 ] && return 0
  if [ "${ALEXNET_DOWNLOAD:-0}" = 1 ]; then
    # opted in: the alexnet commands download it into the data directory (torchvision's reader, checksums verified)
    FMNIST_DIR="$DATA_DIR/fashion-mnist"
    return 0
  fi
  if [ "$FMNIST_DIR" = /usr/share/datasets/fashion-mnist ]; then
    bash docker/system-deps.sh data
  fi
  for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
    if [ ! -e "$FMNIST_DIR/$f.gz" ] && [ ! -e "$FMNIST_DIR/$f" ]; then
      echo "Fashion-MNIST is missing from $FMNIST_DIR." >&2
      echo "Install it with:  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu)" >&2
      echo "or put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz," >&2
      echo "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and set FASHION_MNIST_DIR to it," >&2
      echo "or let it be downloaded (checksums verified): ALEXNET_DOWNLOAD=1 make run" >&2
      exit 1
    fi
  done
}

weights_hash() {
  "${ALEXNET[@]}" info --json "$ALEXNET_WEIGHTS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["content_hash"][:12])'
}

gallery_in_store() {
  "${ALEXNET[@]}" index stats --index "$ALEXNET_INDEX_DIR" 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["images"] > 0 else 1)'
}

prepare() {
  local t0 t
  if [ ! -f "$ALEXNET_WEIGHTS" ]; then
    if [ "$ALEXNET_WEIGHTS" != "$DEFAULT_WEIGHTS" ]; then
      echo "ALEXNET_WEIGHTS=$ALEXNET_WEIGHTS does not exist." >&2
      exit 1
    fi
    ensure_fashion_mnist
    local resume=()
    if [ -f "$DATA_DIR/runs/default/checkpoint.pt" ]; then
      # an interrupted run (Ctrl-C, SIGTERM, a crash after an epoch): continue it instead of starting over
      resume=(--resume)
      say "resuming the interrupted training run in $DATA_DIR/runs/default"
    else
      say "training the default model (recipe ${ALEXNET_RECIPE:-fashion-mnist}; 13 to 18 minutes on 2 CPU cores)"
    fi
    t0=$(now)
    rm -f "$DATA_DIR/runs/default/model.safetensors"  # (an earlier run's; this run writes its own when it finishes)
    # shellcheck disable=SC2086
    "${ALEXNET[@]}" train --recipe "${ALEXNET_RECIPE:-fashion-mnist}" --data-dir "$FMNIST_DIR" --out "$DATA_DIR/runs/default" "${resume[@]}" ${ALEXNET_TRAIN_ARGS:-}
    if [ ! -f "$DATA_DIR/runs/default/model.safetensors" ]; then
      echo "training stopped before it finished; run the same command again to resume it" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$ALEXNET_WEIGHTS")"
    cp "$DATA_DIR/runs/default/model.safetensors" "$ALEXNET_WEIGHTS.tmp" && mv "$ALEXNET_WEIGHTS.tmp" "$ALEXNET_WEIGHTS"
    t=$(( $(now) - t0 )); echo "phase train: ${t}s"
  fi
  export ALEXNET_INDEX_DIR="${ALEXNET_INDEX_DIR:-$DATA_DIR/index/$(weights_hash)}"
  if [ -n "${ALEXNET_STORE_URL:-}" ]; then
    # the gallery lives in PostgreSQL: build into it (adds are idempotent, so an interrupted build resumes);
    # the marker on the data volume says a build finished, the store's count that the database still holds it
    if [ ! -f "$ALEXNET_INDEX_DIR/.gallery-built" ] || ! gallery_in_store; then
      ensure_fashion_mnist
      say "building the gallery in PostgreSQL: fc7 of the 10,000 Fashion-MNIST test images"
      t0=$(now)
      # shellcheck disable=SC2086
      "${ALEXNET[@]}" index build "${ALEXNET_GALLERY:-fashion-mnist:test}" --data-dir "$FMNIST_DIR" --weights "$ALEXNET_WEIGHTS" ${ALEXNET_INDEX_ARGS:-} --index "$ALEXNET_INDEX_DIR"
      touch "$ALEXNET_INDEX_DIR/.gallery-built"
      t=$(( $(now) - t0 )); echo "phase index: ${t}s"
    fi
  elif [ ! -f "$ALEXNET_INDEX_DIR/store.sqlite" ]; then
    ensure_fashion_mnist
    say "building the gallery: fc7 of the 10,000 Fashion-MNIST test images into $ALEXNET_INDEX_DIR"
    t0=$(now)
    # shellcheck disable=SC2086
      "${ALEXNET[@]}" index build "${ALEXNET_GALLERY:-fashion-mnist:test}" --data-dir "$FMNIST_DIR" --weights "$ALEXNET_WEIGHTS" ${ALEXNET_INDEX_ARGS:-} --index "$ALEXNET_INDEX_DIR.partial"
    rm -rf "$ALEXNET_INDEX_DIR" && mv "$ALEXNET_INDEX_DIR.partial" "$ALEXNET_INDEX_DIR"
    t=$(( $(now) - t0 )); echo "phase index: ${t}s"
  fi
}

serve() {
  export ALEXNET_INDEX_DIR="${ALEXNET_INDEX_DIR:-$DATA_DIR/index/$(weights_hash)}"
  say "serving $ALEXNET_WEIGHTS with the index in $ALEXNET_INDEX_DIR"
  exec "${ALEXNET[@]}" serve "$@"
}

case "${1:-run}" in
  run) install; prepare; shift || true; serve "$@" ;;
  prepare) install; prepare ;;
  serve) shift; serve "$@" ;;
  install) install ;;
  alexnet) shift; exec "${ALEXNET[@]}" "$@" ;;
  *) echo "usage: $0 run|prepare|serve|install|alexnet ARGS..." >&2; exit 2 ;;
esac
