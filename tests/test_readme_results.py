"""Every number the README quotes from a results table is in that table: a block of README.md between
``<!-- numbers from: PATH [PATH ...] -->`` and ``<!-- end numbers -->`` may only use decimal numbers
that occur, as written, in one of the named files (paths relative to the repository root; code spans
are skipped: they hold commands, not results)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- numbers from: (?P<paths>[^>]*?) -->(?P<text>.*?)<!-- end numbers -->", re.DOTALL)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def decimals(text: str) -> set[str]:
    """The decimal numbers of ``text`` outside code spans, signs dropped (a table's "-0.41" is quoted
    as "0.41 lower")."""
    return {number.lstrip("+-") for number in NUMBER.findall(CODE.sub(" ", text))}


def blocks(text: str) -> list[tuple[int, list[str], str]]:
    """``(line, paths, text)`` of every checked block."""
    return [(text.count("\n", 0, match.start()) + 1, match.group("paths").split(), match.group("text"))
            for match in BLOCK.finditer(text)]


def unchecked_numbers(block: str, sources: list[str]) -> set[str]:
    found = set().union(*(decimals(source) for source in sources)) if sources else set()
    return decimals(block) - found


def test_the_checker_catches_a_number_missing_from_its_table():
    table = "| routing | 0.1 | spectral | 0.02945 [0.01895, 0.03814] |\n"
    assert unchecked_numbers("ΔPoR 0.02945 [0.01895, 0.03814] at eps 0.1", [table]) == set()
    assert unchecked_numbers("ΔPoR 0.0295 [0.01895, 0.03814]", [table]) == {"0.0295"}
    assert unchecked_numbers("difference -0.02945, `--set eps=0.77`", [table]) == set()
    readme = "a\n<!-- numbers from: x.md y.md -->\nb 1.5\n<!-- end numbers -->\n"
    assert blocks(readme) == [(2, ["x.md", "y.md"], "\nb 1.5\n")]


README_BLOCKS = blocks((ROOT / "README.md").read_text())


@pytest.mark.parametrize("line, paths, text", README_BLOCKS,
                         ids=[f"README.md:{line}" for line, _, _ in README_BLOCKS])
def test_readme_numbers_are_in_their_tables(line, paths, text):
    missing = [path for path in paths if not (ROOT / path).is_file()]
    assert not missing, f"README.md:{line} cites missing files {missing}"
    unchecked = unchecked_numbers(text, [(ROOT / path).read_text() for path in paths])
    assert not unchecked, f"README.md:{line}: numbers not in {paths}: {sorted(unchecked)}"
