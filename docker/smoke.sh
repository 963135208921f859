#!/usr/bin/env bash
# `docker compose up` end to end, on this machine (make docker-smoke). Needs root (or a docker group
# member) and a Docker engine; it starts dockerd (vfs storage) if none answers.
#
#   1. start dockerd if none is running
#   2. make a base image from Debian's packages (debootstrap bookworm + python3, venv, make, curl)
#      unless one is given (SMOKE_BASE_IMAGE) or already there
#   3. build the service image on it (PyPI's wheels, this machine's CA bundle for pip, --network host)
#   4. docker-compose up -d with a short training (ALEXNET_TRAIN_ARGS) and a small gallery
#   5. wait until /readyz answers 200
#   6. classify, search, add and fetch over HTTP from the host
#   7. docker-compose down, up again: no retraining, the gallery and the added image survive
#   8. new weights without downtime: train a second model, `exec api alexnet model stage/activate`, the api follows
#   9. build stand-ins for the official postgres and nginx images from Debian's packages (Docker Hub is out of reach)
#  10. --profile replicas: PostgreSQL, init-pg, two replicas, nginx (skipped, saying why, without the disk for them)
#  11. an add through nginx is seen by each replica; 12. a model switch reaches each replica
#  13. take everything down and remove what it created (SMOKE_KEEP=1 keeps the images)
# Prints each step's time and the image's size.
#
#   smoke.sh --if-possible   (make test) skip, saying why, where it cannot run: not root and no engine to reach, or
#                            under 32 GiB free for the engine, or the engine's disk runs out on the way (it is
#                            shared with whatever else runs on the machine: that is the machine's limit, not a
#                            failure of the service; make docker-smoke fails instead)
set -euo pipefail
cd "$(dirname "$0")/.."

if_possible=0
[ "${1:-}" = --if-possible ] && if_possible=1
if [ $if_possible = 1 ] && [ "$(id -u)" != 0 ] && ! docker info >/dev/null 2>&1; then
  echo "[smoke] skipped: needs root (to start dockerd and debootstrap) or a running Docker engine; run: make docker-smoke"
  exit 0
fi

PROJECT=alexnet-smoke
PORT="${SMOKE_PORT:-18080}"
BASE="${SMOKE_BASE_IMAGE:-alexnet-base:bookworm}"
IMAGE=alexnet-service:smoke
KEY=smoke-key
URL="http://127.0.0.1:$PORT"
export ALEXNET_IMAGE="$IMAGE" ALEXNET_BASE_IMAGE="$BASE" TORCH_INDEX_URL="" ALEXNET_PUBLISH_PORT="$PORT" ALEXNET_API_KEY="$KEY"
export ALEXNET_TRAIN_ARGS="${SMOKE_TRAIN_ARGS:---minutes 0.5 --max-train-images 4000}"
export ALEXNET_INDEX_ARGS="${SMOKE_INDEX_ARGS:---limit 500}"
# docker-compose 1.29 gives up on the engine after 60 s by default; creating a container from a 6 GB image on the
# vfs storage driver (a full copy) can take longer on a slow disk
export COMPOSE_HTTP_TIMEOUT="${COMPOSE_HTTP_TIMEOUT:-900}" DOCKER_CLIENT_TIMEOUT="${DOCKER_CLIENT_TIMEOUT:-900}"
COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml)
made_base=0
dockerd_pid=""
work=$(mktemp -d)

t_start=$(date +%s)
t_step=$t_start
step() {
  local now; now=$(date +%s)
  printf '[smoke] %-58s %4ss (total %ss)\n' "$1" $((now - t_step)) $((now - t_start))
  t_step=$now
}
# the containers' logs first, the reason last: CI shows the tail of the output
fail() { "${COMPOSE[@]}" logs --tail 60 >&2 || true; echo "[smoke] FAILED: $*" >&2; exit 1; }

cleanup() {
  rm -f docker/pip/ca.crt
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  if [ "${SMOKE_KEEP:-0}" != 1 ]; then
    docker image rm -f "$IMAGE" alexnet-standin-postgres:smoke alexnet-standin-nginx:smoke >/dev/null 2>&1 || true
    docker image prune -f >/dev/null 2>&1 || true  # the build stage's layers (they hold the base image too)
    if [ $made_base = 1 ]; then docker image rm -f "$BASE" >/dev/null 2>&1 || true; fi
    docker image prune -f >/dev/null 2>&1 || true
  fi
  if [ -n "$dockerd_pid" ]; then  # the engine this script started
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM  # (so that the EXIT trap cleans up after a signal too)

# 1. the engine
bash docker/system-deps.sh docker
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "no dockerd: apt-get install docker.io" >&2; exit 1; }
  nohup dockerd --storage-driver=vfs >/var/log/alexnet-smoke-dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see /var/log/alexnet-smoke-dockerd.log)"
fi
command -v docker-compose >/dev/null || { echo "no docker-compose: apt-get install docker-compose" >&2; exit 1; }
step "1 docker engine"

# the engine's disk: on vfs the image, its build stage and each container are full copies (about 6 GB each)
root=$(docker info -f '{{.DockerRootDir}}')
free_kib() { df --output=avail -k "$root" | tail -1 | tr -d ' '; }
have=$(free_kib)
if [ "$have" -lt $((32 * 1024 * 1024)) ]; then
  msg="$((have / 1024 / 1024)) GiB free in $root; the image, its build stage and the default profile's two containers need about 32"
  if [ $if_possible = 1 ]; then echo "[smoke] skipped: $msg"; exit 0; fi
  fail "$msg"
fi
# LOG WHAT: called where a step failed. The disk is shared with the rest of the machine and can fill up after the
# check above; under make test that ends the smoke test as skipped, saying where and how much was left.
disk_ran_out() {
  grep -qi "no space left on device" "$1" 2>/dev/null || return 0
  local msg; msg="the engine's disk ran out at '$2' ($(( $(free_kib) / 1024 )) MiB free in $root now): $(grep -i -m1 "no space left" "$1")"
  [ $if_possible = 1 ] || fail "$msg"
  echo "[smoke] skipped: $msg"
  exit 0
}

# 2. the base image (Docker Hub is out of reach here)
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "no debootstrap: apt-get install debootstrap" >&2; exit 1; }
  bootstrap() {
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,make,curl,ca-certificates \
      bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1
  }
  bootstrap || { echo "[smoke] retrying debootstrap once (package registries)" >&2; sleep 10; bootstrap; } \
    || fail "debootstrap (see $work/debootstrap.log)"
  tar -C "$work/rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
  made_base=1
fi
step "2 base image $BASE"

# 3. the service image; pip's CA bundle goes to the build stage only
# the CA bundle pip's own settings name here (PIP_CERT, or `cert` in a pip configuration file)
pip_cert() {
  if [ -n "${PIP_CERT:-}" ]; then echo "$PIP_CERT"; return; fi
  python3 -m pip config list 2>/dev/null | grep -E "^[a-z:]*\.cert='[^']+'" | head -1 | cut -d= -f2- | tr -d "'\""
}
cert=$(pip_cert)
[ -n "$cert" ] && [ -f "$cert" ] && cp "$cert" docker/pip/ca.crt
build() {
  DOCKER_BUILDKIT=0 docker build --network host -q -f docker/Dockerfile \
    --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX_URL= -t "$IMAGE" . >"$work/build.log" 2>&1
}
build || { disk_ran_out "$work/build.log" "docker build"; tail -20 "$work/build.log" >&2
  echo "[smoke] retrying the build once (package registries)" >&2; build; } \
  || { disk_ran_out "$work/build.log" "docker build"; tail -40 "$work/build.log" >&2; fail "docker build"; }
rm -f docker/pip/ca.crt
[ "${SMOKE_KEEP:-0}" = 1 ] || docker image prune -f >/dev/null 2>&1  # the build stage: a second 6 GB on vfs
docker run --rm --entrypoint sh "$IMAGE" -c 'test ! -e /tmp/pip && ! grep -rqs "BEGIN CERTIFICATE" /app' 2>"$work/run.log" \
  || { disk_ran_out "$work/run.log" "docker run"; fail "build secrets in the image: $(tail -3 "$work/run.log")"; }
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
step "3 build $IMAGE ($((size / 1024 / 1024)) MiB)"

# 4. up, with a short training
"${COMPOSE[@]}" up -d >"$work/up1.log" 2>&1 || { disk_ran_out "$work/up1.log" "docker-compose up"; fail "docker-compose up: $(tail -5 "$work/up1.log")"; }
step "4 docker-compose up -d (init: train + gallery)"

# 5. health
wait_ready() {
  for _ in $(seq 300); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && return 0
    sleep 2
  done
  "${COMPOSE[@]}" logs --tail 200 >"$work/ready.log" 2>&1 || true
  disk_ran_out "$work/ready.log" "waiting for /readyz"
  fail "$URL/readyz not 200 within 600 s"
}
wait_ready
step "5 /readyz 200"

# 6. the API from the host
python3 - "$work/q.png" <<'EOF'
import struct, sys, zlib
w = h = 28
rows = b"".join(b"\x00" + bytes(255 if 8 < x < 20 and 4 < y < 24 else 0 for x in range(w)) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
classify=$(curl -fsS -F "file=@$work/q.png" "$URL/classify?k=3") || fail "/classify"
echo "$classify" | grep -q '"predictions":\[{"index"' || fail "/classify answered $classify"
similar=$(curl -fsS -F "file=@$work/q.png" "$URL/similar?k=5") || fail "/similar"
echo "$similar" | grep -q '"count":5' || fail "/similar answered $similar"
added=$(curl -fsS -H "Authorization: Bearer $KEY" -F "file=@$work/q.png" -F label=smoke "$URL/images") || fail "POST /images"
id=$(echo "$added" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["id"])')
curl -fsS -o /dev/null "$URL/images/$id" || fail "GET /images/$id"
step "6 classify, similar, add (id $id), fetch over HTTP"

# 7. down and up again: the volume keeps weights and gallery
"${COMPOSE[@]}" down >/dev/null 2>&1
"${COMPOSE[@]}" up -d >"$work/up2.log" 2>&1 || { disk_ran_out "$work/up2.log" "second docker-compose up"; fail "second docker-compose up: $(tail -5 "$work/up2.log")"; }
# (down removed the containers: these logs are the second init's alone)
"${COMPOSE[@]}" logs init | grep -q "training the default model" && fail "the second up trained again"
"${COMPOSE[@]}" logs init | grep -q "building the gallery" && fail "the second up rebuilt the gallery"
wait_ready
curl -fsS "$URL/images/$id/meta" | grep -q '"label":"smoke"' || fail "image $id did not survive down/up"
step "7 down + up: no retraining, gallery and image $id kept"

# 8. new weights without downtime (README): a second model trained with another seed, staged and activated with
#    `docker compose exec api alexnet model ...` beside the running service; it switches by itself
weights_of() { python3 -c 'import json,sys; print(json.load(sys.stdin).get("model", {}).get("weights_hash", ""))'; }
wait_weights() {  # COMMAND HASH12 WHAT: until the command's /readyz names that hash (30 s at most)
  for _ in $(seq 150); do
    case "$($1 2>/dev/null | weights_of 2>/dev/null)" in "$2"*) return 0 ;; esac
    sleep 0.2
  done
  fail "$3 does not answer with $2 within 30 s"
}
EXEC=("${COMPOSE[@]}" exec -T)
"${EXEC[@]}" api alexnet train --recipe fashion-mnist --seed 2 --minutes 0.3 --max-train-images 2000 \
  --data-dir /usr/share/datasets/fashion-mnist --out /data/runs/seed2 >"$work/train2.log" 2>&1 \
  || { disk_ran_out "$work/train2.log" "training a second model"; fail "training a second model: $(tail -5 "$work/train2.log")"; }
staged=$("${EXEC[@]}" api alexnet model stage /data/runs/seed2/model.safetensors --quiet 2>&1) || fail "model stage: $staged"
new=$(echo "$staged" | sed -n 's/^staged \([0-9a-f]\{12\}\) .*/\1/p')
[ -n "$new" ] || fail "model stage printed no hash: $staged"
first=$(curl -fsS "$URL/readyz" | weights_of)
"${EXEC[@]}" api alexnet model activate "$new" >"$work/activate.log" 2>&1 || fail "model activate: $(cat "$work/activate.log")"
wait_weights "curl -fsS $URL/readyz" "$new" "the api"
curl -fsS -F "file=@$work/q.png" "$URL/similar?k=5" | weights_of | grep -q "^$new" || fail "/similar does not answer with $new"
step "8 stage + activate ${new} (was ${first:0:12}): the api switched"

skip_replicas() {
  echo "[smoke] the replicas profile skipped: $1 (each container is a full copy of the image on vfs)"
  "${COMPOSE[@]}" down >/dev/null 2>&1
  replicas_skipped=1
}
# 9-12. the replicas profile for real: PostgreSQL, two replicas, nginx. Each container on the vfs storage driver is
# a full copy of the service image, so it runs only where the engine's disk has room for three more.
"${COMPOSE[@]}" down >/dev/null 2>&1
need=$(( 3 * size / 1024 + 4 * 1024 * 1024 ))  # KiB: init-pg and two replicas, and some room
have=$(free_kib)
if [ "$have" -lt "$need" ]; then
  skip_replicas "$((have / 1024 / 1024)) GiB free in $root, it needs $((need / 1024 / 1024)) GiB"
else
  for standin in postgres nginx; do
    DOCKER_BUILDKIT=0 docker build --network host -q -f "docker/standins/$standin.Dockerfile" --build-arg BASE_IMAGE="$BASE" \
      -t "alexnet-standin-$standin:smoke" docker/standins >"$work/build-$standin.log" 2>&1 \
      || fail "building the $standin stand-in: $(tail -20 "$work/build-$standin.log")"
  done
  export ALEXNET_POSTGRES_IMAGE=alexnet-standin-postgres:smoke ALEXNET_NGINX_IMAGE=alexnet-standin-nginx:smoke
  export ALEXNET_REPLICAS=2 ALEXNET_LB_PORT=$((PORT + 1))
  LB="http://127.0.0.1:$ALEXNET_LB_PORT"
  COMPOSE+=(--profile replicas)
  EXEC=("${COMPOSE[@]}" exec -T)
  step "9 stand-in images: PostgreSQL and nginx from Debian's packages"
  # (init trained the model into the volume already: init-pg alone writes the gallery into PostgreSQL, and its
  # container goes before the replicas' come)
  "${COMPOSE[@]}" up -d postgres >"$work/up3.log" 2>&1 || fail "up postgres: $(tail -5 "$work/up3.log")"
  before=$(free_kib)
  "${COMPOSE[@]}" up --no-deps --exit-code-from init-pg init-pg >"$work/init-pg.log" 2>&1 || fail "init-pg: $(tail -20 "$work/init-pg.log")"
  per_container=$(( before - $(free_kib) ))  # what one container of the image costs this engine's disk
  "${COMPOSE[@]}" rm -f init-pg >/dev/null 2>&1
  # the disk is shared with whatever else runs on the machine: look again, with the cost just measured
  need=$(( 2 * per_container + 3 * 1024 * 1024 ))
  if [ "$(free_kib)" -lt "$need" ]; then
    skip_replicas "$(( $(free_kib) / 1024 / 1024 )) GiB free in $root, two replicas need $((need / 1024 / 1024)) GiB"
  elif ! "${COMPOSE[@]}" up -d --no-deps api-replica lb >"$work/up4.log" 2>&1; then
    # running out of disk on the way is the machine's limit, not the service's failure; anything else fails
    grep -q "no space left on device" "$work/up4.log" || fail "up replicas: $(tail -5 "$work/up4.log")"
    skip_replicas "the engine's disk ran out creating the replicas: $(grep -m1 "no space left" "$work/up4.log")"
  fi
fi
if [ -z "${replicas_skipped:-}" ]; then
  for _ in $(seq 300); do curl -fsS "$LB/readyz" >/dev/null 2>&1 && break; sleep 2; done
  mapfile -t replicas < <(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=api-replica)
  [ "${#replicas[@]}" = 2 ] || fail "expected 2 running replicas, found ${#replicas[@]}"
  for r in "${replicas[@]}"; do
    for _ in $(seq 150); do docker exec "$r" curl -fsS http://127.0.0.1:8000/readyz >/dev/null 2>&1 && break; sleep 2; done
  done
  step "10 --profile replicas: postgres, init-pg, 2 replicas, nginx ready"

  # 11. an add through nginx is seen by every replica
  added=$(curl -fsS -H "Authorization: Bearer $KEY" -F "file=@$work/q.png" -F label=replicas "$LB/images") || fail "POST /images through nginx"
  rid=$(echo "$added" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["id"])')
  for r in "${replicas[@]}"; do
    seen=0
    for _ in $(seq 100); do
      docker exec "$r" curl -fsS "http://127.0.0.1:8000/images/$rid/meta" 2>/dev/null | grep -q '"label":"replicas"' && { seen=1; break; }
      sleep 0.1
    done
    [ $seen = 1 ] || fail "replica $r does not see image $rid within 10 s"
  done
  step "11 add through nginx (id $rid) seen by both replicas"

  # 12. a model switch, run in one replica's container, reaches every replica
  staged=$("${EXEC[@]}" api-replica alexnet model stage /data/runs/seed2/model.safetensors --quiet 2>&1) || fail "model stage (replicas): $staged"
  "${EXEC[@]}" api-replica alexnet model activate "$new" >"$work/activate2.log" 2>&1 || fail "model activate (replicas): $(cat "$work/activate2.log")"
  for r in "${replicas[@]}"; do wait_weights "docker exec $r curl -fsS http://127.0.0.1:8000/readyz" "$new" "replica $r"; done
  curl -fsS -F "file=@$work/q.png" "$LB/similar?k=5" | weights_of | grep -q "^$new" || fail "/similar through nginx does not answer with $new"
  step "12 stage + activate $new on PostgreSQL: both replicas switched"
fi

# 13. everything down (the trap removes the rest)
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
step "13 down -v"
echo "[smoke] passed in $(( $(date +%s) - t_start ))s; image $((size / 1024 / 1024)) MiB"
