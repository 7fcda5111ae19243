"""Builds tf_hps's op libraries into the package: ``pip install .`` and ``python -m build`` run this.

The libraries are compiled by the Makefile (``make libs``, the same rules and one source list,
sources.bzl, as ``make lib`` and Bazel) against the TensorFlow of the Python building the wheel: in
an isolated build, the ``tensorflow-cpu`` of pyproject.toml's build requirements; with
``--no-build-isolation``, the environment's. The wheel holds no CPython extension module, so it is
tagged ``py3-none-<platform>``: it needs TensorFlow 2.21 (checked at import) and the platform's
libraries, which ``auditwheel repair`` copies into it for a manylinux wheel (docs/install.md).
"""

import hashlib
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1

ROOT = os.path.dirname(os.path.abspath(__file__))
# What `make libs` needs from the system (Debian / Ubuntu package names).
SYSTEM_HEADERS = {"rocksdb/db.h": "librocksdb-dev", "hiredis/hiredis.h": "libhiredis-dev",
                  "nlohmann/json.hpp": "nlohmann-json3-dev", "openssl/ssl.h": "libssl-dev"}


def _check_system():
    missing = [tool for tool in ("make", "g++") if shutil.which(tool) is None]
    missing += [pkg for header, pkg in SYSTEM_HEADERS.items()
                if not any(os.path.exists(os.path.join(d, header)) for d in ("/usr/include", "/usr/local/include"))]
    if missing:
        sys.exit(f"tf_hps: building the op libraries needs {', '.join(missing)} "
                 f"(Debian/Ubuntu: apt-get install g++ make {' '.join(SYSTEM_HEADERS.values())})")


def _tensorflow_include() -> str:
    code = "import tensorflow as tf; print(tf.sysconfig.get_include())"
    try:
        return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.strip().splitlines()[-1]
    except subprocess.CalledProcessError as e:
        sys.exit(f"tf_hps: building needs TensorFlow 2.21 in the building Python ({sys.executable}):\n{e.stderr}")


class BuildWithLibraries(build_py):
    def run(self):
        if getattr(self, "editable_mode", False):  # pip install -e .: the libraries are built in place (make lib)
            return super().run()
        _check_system()
        include = _tensorflow_include()
        # The development build's objects are reused when this is its TensorFlow; others build apart.
        venv_include = os.path.join(ROOT, ".venv", "lib", f"python{sys.version_info.major}.{sys.version_info.minor}",
                                    "site-packages", "tensorflow", "include")
        same = os.path.isdir(venv_include) and os.path.samefile(include, venv_include)
        build = "build" if same else "build/wheel-" + hashlib.sha1(include.encode()).hexdigest()[:10]
        subprocess.run(["make", "--no-print-directory", "-C", ROOT, "libs", f"PY={sys.executable}", f"BUILD={build}"],
                       check=True)
        super().run()


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform  # shared libraries loaded by TensorFlow and ctypes, no Python ABI


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=BinaryDistribution, cmdclass={"build_py": BuildWithLibraries, "bdist_wheel": PlatformWheel})
