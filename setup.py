"""Build of the compiled fast paths; everything else is in pyproject.toml.

Both extensions are plain CPython C API code (gcc and the Python headers are all they need). The
pure-Python code they speed up stays and is used when they are not importable.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # line protocol: parse lines, and map the common case straight to datums
        Extension("processors._lpfast", ["processors/_lpfast.c"]),
        # the Avro datum batch envelope, byte for byte what fastavro writes
        Extension("pipeline._avrofast", ["pipeline/_avrofast.c"]),
    ],
)
