"""Build step for the one C extension; everything else is in pyproject.toml.

`bsky_backfill.repo._native` (verification's per-block hashing loops, see
src/bsky_backfill/repo/_native.c) is optional: without a C compiler or the
OpenSSL headers the install still succeeds and the same checks run in Python
(repo/native.py picks whichever is there), only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bsky_backfill.repo._native",
            ["src/bsky_backfill/repo/_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
