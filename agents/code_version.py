"""The version of the code a result was made with, recorded in every run summary and benchmark cell.

A git checkout answers with ``git rev-parse HEAD``, plus ``+dirty`` when files under the source folders
differ from it (tracked changes and new files that ``.gitignore`` does not exclude). A tree exported with
``git archive`` (how a long experiment runs from a frozen copy of a commit while work goes on in the
checkout) answers with the commit that ``git archive`` writes into ``agents/COMMIT`` (``export-subst`` in
``.gitattributes``); edits made inside such a copy go unnoticed. Anything else, e.g. an installed wheel,
answers ``"unknown"``.

The answer is computed once per process and kept, so callers ask for it when they start (the code a
process runs is the code it imported, whatever the checkout holds hours later).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMIT_FILE = pathlib.Path(__file__).with_name("COMMIT")
SOURCES = ("agents", "envs", "regularizers", "robustness", "train.py", "benchmark.py")
UNKNOWN = "unknown"


def exported_commit(text: str) -> str | None:
    """The commit (SHA-1 or SHA-256 hex) in an ``agents/COMMIT`` text that ``git archive`` filled in; None
    if it is the unfilled template or anything else."""
    text = text.strip()
    return text if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", text) else None


def _git(*args: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}  # e.g. set in hooks
    return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True, timeout=30, env=env).stdout.strip()


@functools.cache
def code_version() -> str:
    """``<commit>``, ``<commit>+dirty`` (a checkout with uncommitted source changes) or ``"unknown"``."""
    if COMMIT_FILE.is_file() and (commit := exported_commit(COMMIT_FILE.read_text())):
        return commit
    if not (ROOT / ".git").exists():  # not the checkout's own repository (an install inside another one)
        return UNKNOWN
    try:
        head = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=normal", "--", *SOURCES)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return head + ("+dirty" if changed else "") if exported_commit(head) else UNKNOWN
