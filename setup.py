"""Build of the compiled fast paths; everything else is in pyproject.toml.

Both extensions are plain CPython C API code (gcc and the Python headers are all they need). The
pure-Python code they speed up stays and is used when they are not importable.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

# Read at run time but kept outside the packages in the source tree (`schemas/avro` by the codec,
# `schemas/datamodels` by `up --demo`): a wheel carries them as pipeline/schemas/... (see
# pipeline/resources.py, which finds either place).
RUNTIME_FILES = {"avro": "*.avsc", "datamodels": "*.json"}


class BuildPyWithSchemas(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent / "schemas"
        for kind, pattern in RUNTIME_FILES.items():
            files = sorted((root / kind).glob(pattern))
            if not files:  # a wheel without them dead-letters nothing but decodes nothing either
                raise SystemExit(f"setup.py: no {pattern} in {root / kind}")
            target = Path(self.build_lib) / "pipeline" / "schemas" / kind
            self.mkpath(str(target))
            for f in files:
                self.copy_file(str(f), str(target / f.name))


setup(
    cmdclass={"build_py": BuildPyWithSchemas},
    ext_modules=[
        # line protocol: parse lines, and map the common case straight to datums
        Extension("processors._lpfast", ["processors/_lpfast.c"]),
        # the Avro datum batch envelope, byte for byte what fastavro writes
        Extension("pipeline.wire._avrofast", ["pipeline/wire/_avrofast.c"]),
    ],
)
