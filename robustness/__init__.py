"""Robustness benchmark: evaluation of trained policies under attacks, theory diagnostics, reporting, the grid runner."""
