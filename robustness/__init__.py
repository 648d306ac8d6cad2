"""Robustness benchmark: evaluation of trained policies under attacks, theory diagnostics, reporting, the grid runner.

``python benchmark.py`` (``robustness.cli``) runs a grid; ``python -m robustness.report DIR`` reports one.
"""


class ReportError(ValueError):
    """Results that cannot be reported (a malformed file, a missing baseline); the message is one line."""


class MissingResultsError(ReportError, FileNotFoundError):
    """A results file the report needs is not there."""
