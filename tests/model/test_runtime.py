"""model/runtime.py: with freed memory retained, repeated forward-sized allocations stop page-faulting.

mallopt changes the whole process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from model.runtime import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="needs glibc's mallopt")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from model.runtime import GLIBC_DEFAULT_THRESHOLD, page_faults, retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else retain_freed_memory(GLIBC_DEFAULT_THRESHOLD)
    x = torch.ones(4 * 1024 * 1024)  # 16 MiB, like a batch's activation map
    for _ in range(20):  # first touches, and the heap settling around the interpreter's small blocks
        (x * 2).sum()
    faults = []
    for _ in range(21):
        before = page_faults()
        (x * 2).sum()  # a fresh 16 MiB result, freed at once
        faults.append(page_faults() - before)
    # the median pass: a pass now and then lands on fresh pages while the heap settles around
    # the interpreter's own blocks; glibc's thresholds make every pass fault
    print(json.dumps({"applied": applied, "faults_per_pass": sorted(faults)[10]}))
    """
)


def _faults(mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_reused_without_page_faults() -> None:
    retained, default = _faults("retain"), _faults("default")
    assert retained["applied"] and default["applied"]
    # 16 MiB is 4096 pages of 4 KiB: glibc's thresholds hand it back and fault it in again each time
    assert default["faults_per_pass"] > 2000, default
    assert retained["faults_per_pass"] < 100, retained


@pytest.mark.parametrize(
    ("argv", "env", "applied"),
    [
        (["classify"], None, True),
        (["index"], None, True),
        (["info"], None, False),
        (["classify"], "false", False),
        (["train"], "off", False),
        (["evaluate"], "1", True),
    ],
)
def test_console_applies_it_for_model_commands(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str | None, applied: bool) -> None:
    import types

    import model.runtime
    from model import console

    calls: list[int] = []
    monkeypatch.setattr(model.runtime, "retain_freed_memory", lambda: calls.append(1) or True)
    real_import = console.importlib.import_module
    commands = {module for module, _ in console.COMMANDS.values()}

    def fake_import(name: str, package: str | None = None) -> object:  # the command modules only (pydantic imports lazily too)
        return types.SimpleNamespace(main=lambda *a: 0) if name in commands else real_import(name, package)

    monkeypatch.setattr(console.importlib, "import_module", fake_import)
    if env is None:
        monkeypatch.delenv("ALEXNET_RETAIN_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("ALEXNET_RETAIN_FREED_MEMORY", env)
    assert console.main(argv) == 0
    assert calls == ([1] if applied else [])


def test_console_refuses_a_setting_it_cannot_read(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from model import console

    monkeypatch.setenv("ALEXNET_RETAIN_FREED_MEMORY", "sometimes")
    assert console.main(["classify"]) == 2
    assert "ALEXNET_RETAIN_FREED_MEMORY: Input should be a valid boolean" in capsys.readouterr().err
