"""Build step for the three C extensions; everything else is in pyproject.toml.

Both are optional: without a C compiler (or, for the first, the OpenSSL
headers) the install still succeeds and the same checks run in Python, only
slower. `bsky_backfill.repo._native` holds verification's per-block hashing
loops (src/bsky_backfill/repo/_native.c; repo/native.py picks whichever is
there); `bsky_backfill.records._formats` the lexicon string-format checks
(src/bsky_backfill/records/_formats.c; records/formats.py picks);
`bsky_backfill.records._native` the native record path, CAR record blocks
straight to columns (src/bsky_backfill/records/native/; records/native.py).
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
        ),
        Extension(
            "bsky_backfill.records._native",
            [
                f"src/bsky_backfill/records/native/{name}.c"
                for name in ("module", "json", "lexcheck", "pass")
            ],
            depends=[
                f"src/bsky_backfill/records/native/{name}.h"
                for name in ("cbor", "json", "lexcheck", "formats")
            ],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "bsky_backfill.records._formats",
            ["src/bsky_backfill/records/_formats.c"],
            depends=["src/bsky_backfill/records/native/formats.h"],  # its scans
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
