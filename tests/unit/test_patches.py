"""The runtime patches (ssdflow/patches) name the upstream versions they target: an upgrade past them fails here."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import pytest

from ssdflow.patches import TARGETS


def _installed(name: str) -> str | None:
    if name == "glibc":
        lib, version = platform.libc_ver()
        return version if lib == "glibc" else None
    return metadata.version(name)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_installed_upstream_is_the_one_the_patches_target(name):
    installed = _installed(name)
    if installed is None:
        assert not sys.platform.startswith("linux"), "glibc not found on Linux"
        pytest.skip(f"{name} is not this platform's")
    assert installed.startswith(TARGETS[name]), (
        f"{name} {installed} is installed; ssdflow/patches targets {TARGETS[name]}*. Re-check each patch "
        "that names it in ssdflow/patches/__init__.py (does the upstream still behave so, does the patch still "
        "apply and pay?), then update TARGETS."
    )


def test_every_patch_module_is_in_the_table():
    """A module added to ssdflow/patches without its row (what, targets, why, retire when) fails here."""
    import pkgutil

    import ssdflow.patches as patches

    modules = {m.name for m in pkgutil.iter_modules(patches.__path__)}
    assert {"local_runner", "s3_clients", "quiet"} <= modules
    for name in modules:
        assert f"``{name}``" in patches.__doc__, f"{name} has no row in ssdflow/patches/__init__.py"
