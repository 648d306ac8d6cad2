"""Every number the README quotes from a results table is in that table: a block of README.md between
``<!-- numbers from: PATH [PATH ...] -->`` and ``<!-- end numbers -->`` may only use decimal numbers
(``0.41``, ``-0.407``, ``1.5e-05``, signs included) that occur, as written, in one of the named files
(paths relative to the repository root), and every estimate with its interval, ``x [lo, hi]``, must
occur as one piece (so a point is not quoted with another row's interval). Not checked: whole numbers
(seeds, counts), percentages, and the README's code spans (commands, not results); quote a table's
number with its sign and digits."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPEN, CLOSE = "<!-- numbers from:", "<!-- end numbers -->"
BLOCK = re.compile(r"<!-- numbers from: (?P<paths>[^>]*?) -->(?P<text>.*?)<!-- end numbers -->", re.DOTALL)
# a decimal (with an exponent), not part of a longer token: "0.9999." ends a sentence, "1.17x" is a ratio
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]?\d+)?(?!\d|\.\d)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
DECIMAL = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
ESTIMATE = re.compile(rf"(?<![\w.]){DECIMAL} \[{DECIMAL}, {DECIMAL}\]")


def decimals(text: str, skip_code: bool = False) -> set[str]:
    """The decimal numbers of ``text`` as written (outside code spans when ``skip_code``)."""
    return set(NUMBER.findall(CODE.sub(" ", text) if skip_code else text))


def blocks(text: str) -> list[tuple[int, list[str], str]]:
    """``(line, paths, text)`` of every checked block; a ValueError when the markers do not pair up."""
    found = [(text.count("\n", 0, match.start()) + 1, match.group("paths").split(), match.group("text"))
             for match in BLOCK.finditer(text)]
    if not text.count(OPEN) == text.count(CLOSE) == len(found) or any(OPEN in block for _, _, block in found):
        raise ValueError(f"README.md: {text.count(OPEN)} '{OPEN} ...' markers, {text.count(CLOSE)} '{CLOSE}' "
                         f"markers and {len(found)} well-formed blocks: every block needs both markers")
    return found


def unchecked_numbers(block: str, sources: list[str]) -> set[str]:
    """The numbers of ``block`` not in ``sources``, and its ``x [lo, hi]`` estimates not in them as written."""
    found = set().union(*(decimals(source) for source in sources)) if sources else set()
    text = " ".join(CODE.sub(" ", block).split())
    pieces = {estimate for estimate in ESTIMATE.findall(text)
              if not any(estimate in " ".join(source.split()) for source in sources)}
    return (decimals(block, skip_code=True) - found) | pieces


def test_the_checker_catches_a_number_missing_from_its_table():
    table = "| routing | 0.1 | spectral | -0.02945 [-0.01895, 0.03814] | 6.51e-05 | `0.25` |\n"
    assert unchecked_numbers("ΔPoR -0.02945 [-0.01895, 0.03814] at eps 0.1, 6.51e-05 and 0.25.", [table]) == set()
    assert unchecked_numbers("ΔPoR -0.0295 [-0.01895, 0.03814]", [table]) == {"-0.0295", "-0.0295 [-0.01895, 0.03814]"}
    assert unchecked_numbers("ΔPoR 0.02945 lower", [table]) == {"0.02945"}  # the sign is part of the number
    assert unchecked_numbers("ends a sentence at 0.03815.", [table]) == {"0.03815"}
    assert unchecked_numbers("1.17x faster, 6.52e-05", [table]) == {"1.17", "6.52e-05"}
    assert unchecked_numbers("a command `--set eps=0.77`, 3 of 5 seeds, 95%", [table]) == set()
    assert unchecked_numbers("0.1 [-0.01895, 0.03814]", [table]) == {"0.1 [-0.01895, 0.03814]"}  # another point
    assert unchecked_numbers("-0.02945\n[-0.01895, 0.03814]", [table]) == set()  # a line break is a space
    readme = "a\n<!-- numbers from: x.md y.md -->\nb 1.5\n<!-- end numbers -->\n"
    assert blocks(readme) == [(2, ["x.md", "y.md"], "\nb 1.5\n")]
    for broken in ("<!-- numbers from: x.md -->\nb 1.5\n", "<!-- numbers from: x.md -->\n" + readme,
                   "b\n<!-- end numbers -->\n", "<!-- numbers from x.md -->\nb 1.5\n<!-- end numbers -->\n"):
        with pytest.raises(ValueError, match="every block needs both markers"):
            blocks(broken)


README_BLOCKS = blocks((ROOT / "README.md").read_text())


@pytest.mark.parametrize("line, paths, text", README_BLOCKS,
                         ids=[f"README.md:{line}" for line, _, _ in README_BLOCKS])
def test_readme_numbers_are_in_their_tables(line, paths, text):
    missing = [path for path in paths if not (ROOT / path).is_file()]
    assert not missing, f"README.md:{line} cites missing files {missing}"
    unchecked = unchecked_numbers(text, [(ROOT / path).read_text() for path in paths])
    assert not unchecked, f"README.md:{line}: numbers not in {paths}: {sorted(unchecked)}"
