#!/usr/bin/env bash
# Debian packages the project uses at test time or to get its default data set.
#   system-deps.sh test   chromium (web page test), docker-compose (compose file check) and postgresql
#                         (the shared-gallery tests start their own server)
#   system-deps.sh data   dataset-fashion-mnist (the default model's data)
#   system-deps.sh docker docker.io, docker-compose and debootstrap (docker/smoke.sh)
#   system-deps.sh peers  openjdk-17-jre-headless (TorchServe's frontend, make bench-peers)
# Installs only as root with apt-get; otherwise prints the command to run and carries on.
set -u
case "${1:-test}" in
  test) want=(chromium docker-compose postgresql); need_cmd=(/usr/bin/chromium /usr/bin/docker-compose /usr/lib/postgresql) ;;
  data) want=(dataset-fashion-mnist); need_cmd=(/usr/share/datasets/fashion-mnist) ;;
  docker) want=(docker.io docker-compose debootstrap); need_cmd=(/usr/sbin/dockerd /usr/bin/docker-compose /usr/sbin/debootstrap) ;;
  peers) want=(openjdk-17-jre-headless); need_cmd=(/usr/bin/java) ;;
  *) echo "usage: $0 test|data|docker|peers" >&2; exit 2 ;;
esac
missing=()
for i in "${!want[@]}"; do
  [ -e "${need_cmd[$i]}" ] || missing+=("${want[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1 \
    || echo "warning: apt-get install ${missing[*]} failed; tests that need them are skipped" >&2
else
  echo "note: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
fi
exit 0
