"""The version of sae-rl, at the bottom of the layers so that file metadata can record it."""

__version__ = "0.1.0"
