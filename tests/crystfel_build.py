"""The vendored CrystFEL, built once and cached, for the tests that index with it.

CrystFEL is not in Debian here. Its source (tests/vendor/, GPL-3.0, unmodified; see the README
there) builds in a few minutes on 2 cores with the build tools `deploy/install.sh` installs. The
build lands in `$HITVETO_CACHE` (or ~/.cache/hitveto) under the tarball's name, so later runs find
it at once. `libcrystfel` is linked statically: `indexamajig` then runs without LD_LIBRARY_PATH.
It is used as an external program only, never linked into the product.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TARBALL = Path(__file__).parent / "vendor" / "crystfel-0.12.0-113-g80f24855.tar.gz"
NAME = TARBALL.name.removesuffix(".tar.gz")


def prefix() -> Path:
    return Path(os.environ.get("HITVETO_CACHE", Path.home() / ".cache" / "hitveto")) / NAME


def indexamajig() -> Path:
    """The built `indexamajig`: from the cache, else built now (a few minutes, progress printed)."""
    program = prefix() / "bin" / "indexamajig"
    if not program.exists():
        _build(prefix())
    return program


def _build(install_to: Path) -> None:
    """Configure, compile and install into a temporary prefix, then move it in place: a build
    stopped half way never leaves a prefix that looks complete."""
    install_to.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=install_to.parent) as work:
        with tarfile.open(TARBALL) as tar:
            tar.extractall(work, filter="data")
        source, staged = Path(work) / NAME, Path(work) / "install"
        # no network: meson's subproject downloads stay off (the GUI and optional indexers with them)
        _run(["meson", "setup", "build", f"--prefix={staged}", "--wrap-mode=nofallback",
              "--default-library=static", "--buildtype=release"], source)  # fmt: skip
        _run(["ninja", "-C", "build", f"-j{os.cpu_count() or 2}"], source)
        _run(["ninja", "-C", "build", "install"], source)
        staged.rename(install_to)  # the staged prefix's paths are baked into nothing indexamajig needs


def _run(command: list[str], cwd: Path) -> None:
    print(f"building CrystFEL: {' '.join(command)}", file=sys.stderr, flush=True)
    if shutil.which(command[0]) is None:
        raise RuntimeError(f"{command[0]} not found: deploy/install.sh installs CrystFEL's build tools")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
