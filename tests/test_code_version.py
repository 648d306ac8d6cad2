"""agents.code_version: the commit recorded with every run and cell, in a checkout and in a git archive."""

import json
import os
import pathlib
import shutil
import subprocess
import tarfile

import pytest

from agents import code_version as cv
from robustness.report import code_note, read_cells

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = "$Format:%H$\n"  # agents/COMMIT as committed
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: pathlib.Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fresh repository laid out like the project (agents/COMMIT, .gitattributes, a source and a test
    file), committed once, with code_version looking at it."""
    root = tmp_path / "repo"
    for folder in ("agents", "tests"):
        (root / folder).mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", root / ".gitattributes")
    (root / "agents" / "COMMIT").write_text(TEMPLATE)
    (root / "agents" / "x.py").write_text("x = 1\n")
    (root / "tests" / "test_x.py").write_text("y = 1\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    git(tmp_path, "init", "-q", str(root))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "x")
    monkeypatch.setattr(cv, "ROOT", root)
    monkeypatch.setattr(cv, "COMMIT_FILE", root / "agents" / "COMMIT")
    cv.code_version.cache_clear()
    yield root
    cv.code_version.cache_clear()


def fresh_version() -> str:
    cv.code_version.cache_clear()
    return cv.code_version()


def test_only_a_filled_in_commit_file_names_a_commit():
    sha1, sha256 = "0123456789abcdef" * 2 + "01234567", "0123456789abcdef" * 4
    assert cv.exported_commit(sha1 + "\n") == sha1 and cv.exported_commit(sha256) == sha256
    for text in (TEMPLATE, "", "0123456789abcdef", sha1.upper(), sha1 + "0"):
        assert cv.exported_commit(text) is None
    shipped = cv.COMMIT_FILE.read_text()  # the template in a checkout, a commit in a git archive copy
    assert shipped == TEMPLATE or cv.exported_commit(shipped) is not None


@needs_git
def test_git_archive_fills_in_the_commit_file_and_the_copy_answers_with_it(repo, tmp_path, monkeypatch):
    """The mechanism itself: the project's .gitattributes makes ``git archive`` write the commit into
    agents/COMMIT, so a run from an exported tree (no .git) names its commit."""
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(tmp_path / "tree.tar"), "HEAD"], check=True)
    copy = tmp_path / "copy"
    with tarfile.open(tmp_path / "tree.tar") as tar:
        tar.extractall(copy, filter="data")
    assert not (copy / ".git").exists()
    monkeypatch.setattr(cv, "ROOT", copy)
    monkeypatch.setattr(cv, "COMMIT_FILE", copy / "agents" / "COMMIT")
    assert fresh_version() == git(repo, "rev-parse", "HEAD")
    (copy / "agents" / "COMMIT").write_text(TEMPLATE)
    assert fresh_version() == cv.UNKNOWN  # neither a filled-in copy nor a checkout


@needs_git
def test_a_checkout_answers_with_head_and_dirty_only_for_source_changes(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert fresh_version() == head
    (repo / "tests" / "test_x.py").write_text("y = 2\n")  # not a source folder
    (repo / "notes.txt").write_text("scratch\n")
    assert fresh_version() == head
    (repo / "agents" / "__pycache__").mkdir()
    (repo / "agents" / "__pycache__" / "x.pyc").write_bytes(b"\0")  # ignored
    assert fresh_version() == head
    (repo / "agents" / "x.py").write_text("x = 2\n")  # a tracked source edited
    assert fresh_version() == head + "+dirty"
    git(repo, "checkout", "--", "agents/x.py")
    assert fresh_version() == head
    (repo / "agents" / "new.py").write_text("z = 1\n")  # a new source file, not yet committed
    assert fresh_version() == head + "+dirty"
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "y")
    assert fresh_version() == git(repo, "rev-parse", "HEAD") != head


def test_without_git_or_a_repository_the_answer_is_unknown(repo, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no git executable
    assert fresh_version() == cv.UNKNOWN
    monkeypatch.undo()
    monkeypatch.setattr(cv, "ROOT", repo / "agents")  # a folder without .git of its own
    monkeypatch.setattr(cv, "COMMIT_FILE", repo / "agents" / "COMMIT")
    assert fresh_version() == cv.UNKNOWN


def test_the_answer_is_kept_from_the_first_call(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert fresh_version() == head
    (repo / "agents" / "x.py").write_text("x = 3\n")  # the process keeps running the code it imported
    assert cv.code_version() == head


def test_the_report_counts_the_cells_of_each_code_version(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    for name, code in (("a", "c1"), ("b", "c1"), ("c", "c2"), ("d", None)):
        (cells / f"{name}.json").write_text(json.dumps({"cell": {}} if code is None else {"cell": {}, "code": code}))
    (cells / "e.json").write_text("{broken")
    assert code_note(read_cells(tmp_path)) == ("Code: 2 cell(s) made with `c1`; 1 cell(s) made with `c2`; 1 cell(s) without a "
                                   "record (made by code that does not record its version); 1 cell(s) whose file "
                                   "cannot be read (more than one code version: compare them before pooling).")
    (cells / "c.json").unlink()
    assert code_note(read_cells(tmp_path)).endswith("cannot be read.")  # one version: no warning for the others
    shutil.rmtree(cells)
    assert code_note(read_cells(tmp_path)).startswith("Code: no cell files")
