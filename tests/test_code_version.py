"""agents.code_version: the commit recorded with every run and cell, in a checkout and in a git archive."""

import json
import pathlib
import shutil
import subprocess
import tarfile

import pytest

from agents import code_version as cv
from robustness.report import code_note

ROOT = pathlib.Path(__file__).resolve().parent.parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_only_a_filled_in_commit_file_names_a_commit():
    assert cv.exported_commit("0123456789abcdef0123456789abcdef01234567\n") == "0123456789abcdef0123456789abcdef01234567"
    for text in ("$Format:%H$", "", "0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF01234567"):
        assert cv.exported_commit(text) is None
    assert cv.exported_commit(cv.COMMIT_FILE.read_text()) is None  # the checkout's file is the unfilled template


@needs_git
def test_git_archive_fills_in_the_commit_file(tmp_path):
    """The mechanism itself: the checkout's .gitattributes makes ``git archive`` write the commit into
    agents/COMMIT, so a run from an exported tree names its commit."""
    repo = tmp_path / "repo"
    (repo / "agents").mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    shutil.copy(cv.COMMIT_FILE, repo / "agents" / "COMMIT")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(tmp_path / "tree.tar"), "HEAD"], check=True)
    with tarfile.open(tmp_path / "tree.tar") as tar:
        exported = tar.extractfile("agents/COMMIT").read().decode()
    assert cv.exported_commit(exported) == git(repo, "rev-parse", "HEAD")


def test_an_exported_tree_answers_with_its_commit(tmp_path, monkeypatch):
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    (tmp_path / "COMMIT").write_text(commit + "\n")
    monkeypatch.setattr(cv, "COMMIT_FILE", tmp_path / "COMMIT")
    monkeypatch.setattr(cv, "ROOT", tmp_path)  # no .git: only the file can answer
    cv.code_version.cache_clear()
    try:
        assert cv.code_version() == commit
        (tmp_path / "COMMIT").write_text("$Format:%H$\n")
        cv.code_version.cache_clear()
        assert cv.code_version() == cv.UNKNOWN  # neither an exported tree nor a checkout
    finally:
        cv.code_version.cache_clear()


@needs_git
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_a_checkout_answers_with_head_and_says_when_sources_differ():
    cv.code_version.cache_clear()
    version = cv.code_version()
    head = git(ROOT, "rev-parse", "HEAD")
    changed = git(ROOT, "status", "--porcelain", "--untracked-files=no", "--", *cv.SOURCES)
    assert version == head + ("+dirty" if changed else "")


def test_the_report_counts_the_cells_of_each_code_version(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    for name, code in (("a", "c1"), ("b", "c1"), ("c", "c2"), ("d", None)):
        (cells / f"{name}.json").write_text(json.dumps({"cell": {}} if code is None else {"cell": {}, "code": code}))
    (cells / "e.json").write_text("{broken")
    assert code_note(tmp_path) == ("Code: 2 cell(s) made with `c1`; 1 cell(s) made with `c2`; 1 cell(s) without a "
                                   "record (made before cells recorded their code); 1 cell(s) whose file cannot be "
                                   "read (more than one code version: compare them before pooling).")
    shutil.rmtree(cells)
    assert code_note(tmp_path).startswith("Code: no cell files")
