"""Runs the table management tool (tf_hps/cli.py)."""

from tf_hps import cli

cli.entry_point()
