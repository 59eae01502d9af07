"""Bytewax dataflows and the `cuts` command line that composes them."""
