"""Files shipped inside the package (gateway/data/): found the same way from a source checkout,
an editable install, a wheel or the image, never relative to the source tree."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(name: str) -> Path:
    """The path of ``gateway/data/<name>`` as installed (``scopes.yaml``, ``redis.conf``)."""
    path = Path(str(files("gateway").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed gateway package (a broken install?)")
    return path
