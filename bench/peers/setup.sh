#!/usr/bin/env bash
# The peers' virtual environment: setup.sh VENV PROJECT_PYTHON
# Their own packages (requirements.txt: TorchServe, PyTriton, LitServe and what they pin, numpy 1.x for PyTriton)
# come first on its path; the project's environment (torch, torchvision, Pillow) comes after, through a .pth file,
# so that every peer runs the same PyTorch build as this service without a second copy of it.
set -euo pipefail
venv="$1"; project_python="$2"
here="$(cd "$(dirname "$0")" && pwd)"
[ -x "$venv/bin/python" ] || "$project_python" -m venv "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz_alexnet_project.pth"
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp"; then
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
