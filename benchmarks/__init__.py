"""Benchmarks of keras-hyperiqa against plain PyTorch (not part of the installed package; run from scripts/)."""
