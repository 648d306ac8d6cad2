"""The README's Python snippets run as written: each ```python block in a fresh interpreter, in a
temporary directory (the snippets write run folders and model files), on one torch thread."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Snippets that train for a while (a run of the small config, SB3's ~40 s example): marked slow.
SLOW = ("train(config", "RegularizedPPO(")


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of README.md (line: the fence's, 1-based)."""
    text = (ROOT / "README.md").read_text()
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)]


def params() -> list:
    return [pytest.param(code, id=f"README.md:{line}",
                         marks=[pytest.mark.slow] if any(marker in code for marker in SLOW) else [])
            for line, code in python_blocks()]


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 6
    assert any(not any(marker in code for marker in SLOW) for _, code in python_blocks())


@pytest.mark.parametrize("code", params())
def test_readme_python_block_runs(code, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}"
