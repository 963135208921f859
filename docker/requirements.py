"""Print the project's dependencies from pyproject.toml, one per line (for the image's dependency layer).

    python requirements.py pyproject.toml > requirements.txt

The image installs them before it copies the source, so an edit to the code reuses that layer.
"""

from __future__ import annotations

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"]))
