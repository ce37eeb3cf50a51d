"""Files the pipeline reads at run time that live outside the Python packages in the source
tree: the Avro schemas and the sample datamodels (`schemas/`).

A wheel carries them inside the `pipeline` package (setup.py's build_py copies `schemas/` to
`pipeline/schemas/`); a source checkout or an editable install reads them where they are.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "schemas"  # inside an installed wheel
SOURCE_TREE = Path(__file__).resolve().parent.parent / "schemas"  # a checkout, `pip install -e .`


class ResourceMissing(RuntimeError):
    """A file the installation should carry is not there: an internal error, never bad input."""


def schemas_dir(kind: str) -> Path:
    """The directory of one kind of schema ("avro", "datamodels"), installed or in the tree.

    Never raises: a missing directory is reported by whoever reads from it, with its path."""
    for base in (PACKAGED, SOURCE_TREE):
        if (base / kind).is_dir():
            return base / kind
    return PACKAGED / kind


def read_bytes(path: Path) -> bytes:
    """A resource's bytes, or ResourceMissing naming it (an installation fault, so callers that
    classify errors never take it for a problem of the data they were given)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResourceMissing(f"{path} is not readable ({exc.strerror}): the installation is incomplete") from exc
