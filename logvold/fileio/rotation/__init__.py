"""The steps of the rotator (fileio/rotator.py), one module per strategy on a shared core."""
