"""The version of the code a result was made with, recorded in every run summary and benchmark cell.

A git checkout answers with ``git rev-parse HEAD``, plus ``+dirty`` when tracked source files differ from
it. A tree exported with ``git archive`` (how a long experiment runs from a frozen copy of a commit while
work goes on in the checkout) answers with the commit that ``git archive`` writes into ``agents/COMMIT``
(``export-subst`` in ``.gitattributes``). Anything else, e.g. an installed wheel, answers ``"unknown"``.
"""

from __future__ import annotations

import functools
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMIT_FILE = pathlib.Path(__file__).with_name("COMMIT")
SOURCES = ("agents", "envs", "regularizers", "robustness", "train.py", "benchmark.py")
UNKNOWN = "unknown"


def exported_commit(text: str) -> str | None:
    """The commit in an ``agents/COMMIT`` text that ``git archive`` filled in (None if it is unfilled)."""
    text = text.strip()
    return text if re.fullmatch(r"[0-9a-f]{40}", text) else None


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


@functools.cache
def code_version() -> str:
    """``<40-hex commit>``, ``<commit>+dirty`` (a checkout with uncommitted source changes) or ``"unknown"``."""
    if COMMIT_FILE.is_file() and (commit := exported_commit(COMMIT_FILE.read_text())):
        return commit
    if not (ROOT / ".git").exists():  # not the checkout's own repository (an install inside another one)
        return UNKNOWN
    try:
        head = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no", "--", *SOURCES)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return head + ("+dirty" if changed else "") if exported_commit(head) else UNKNOWN
