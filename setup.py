"""Builds fastxent's compiled extension; all metadata lives in pyproject.toml."""

from setuptools import setup

setup()
