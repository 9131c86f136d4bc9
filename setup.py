"""Build the Cython hot path in native/ into gateway._native.

Every native/<name>.pyx becomes the extension module gateway._native.<name>;
adding a module needs no change here. Cython runs at build time (it is a
build requirement in pyproject.toml), so no generated C is committed.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent

extensions = [
    Extension(
        f"gateway._native.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        extra_compile_args=["-O2"],
    )
    for pyx in sorted((HERE / "native").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["native"],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
