"""Runs the table management tool (tf_hps/cli.py)."""

from tf_hps import cli

__doc__ = cli.__doc__  # absl prints the main module's docstring with usage errors

cli.entry_point()
