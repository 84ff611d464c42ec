"""Parsing the TOML or JSON files that hold settings (``--config``, ``--schema``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the standard library's TOML parser from 3.11 on, its backport before
    import tomli as tomllib

__all__ = ["is_toml", "parse_settings"]


def is_toml(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a TOML file: its name ends in ``.toml``, in any case (``.toml``
    alone too)."""
    return Path(path).name.lower().endswith(".toml")


def parse_settings(text: str, path: str | os.PathLike) -> Any:
    """``text``, read from ``path``, parsed as TOML when :func:`is_toml`, else as JSON.

    Raises
    ------
    ValueError
        When ``text`` does not parse (both parsers' errors are ``ValueError``\\ s).
    """
    return tomllib.loads(text) if is_toml(path) else json.loads(text)
