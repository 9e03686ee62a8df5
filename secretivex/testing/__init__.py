"""Test helpers for other projects' suites (``pip install secretivex[testing]``)."""
