"""`jaxforge new-plugin NAME`: a new plugin package, copied from framework/plugin_template.

The template is a complete installable distribution (`jaxforge-example`, import package
`jaxforge_example`); the copy gets the new distribution name, and an import package named after it
(`acme-vision` -> `acme_vision`), everywhere: folder, pyproject entry points, plugin ids in the
experiment, tests and README. It ships inside the `framework` package as package data (not as
importable modules), so `new-plugin` works from an installed wheel as from a checkout.
"""

from __future__ import annotations

import keyword
import re
import shutil
import sys
from pathlib import Path

from framework.errors import JaxforgeError
from framework.registry import normalize_distribution

TEMPLATE = Path(__file__).resolve().parent / "plugin_template"
TEMPLATE_DISTRIBUTION = "jaxforge-example"
TEMPLATE_PACKAGE = "jaxforge_example"
RESERVED = {"framework", "plugins", "jaxforge", "tests", "experiments", "tools"}
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist",
                                  ".pytest_cache")
_DISTRIBUTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")


def _check_name(name: str) -> str:
    if not _DISTRIBUTION_NAME.fullmatch(name):
        raise JaxforgeError(
            f"{name!r} is not a usable package name: use letters and digits, words joined by "
            "'-' or '_', starting with a letter, e.g. acme-vision.")
    package = normalize_distribution(name)  # Also its plugins' id prefix.
    if package in RESERVED or keyword.iskeyword(package) or package in sys.stdlib_module_names:
        owner = "jaxforge" if package in RESERVED else "Python"
        raise JaxforgeError(
            f"The package {package!r} would shadow {owner}'s own module of that name; choose "
            f"another name, e.g. {package}-plugins.")
    return package


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Create `directory/name`, the template renamed to distribution `name`; returns its path."""
    package = _check_name(name)
    if not TEMPLATE.is_dir():
        raise JaxforgeError(
            f"The plugin template is not at {TEMPLATE}: this jaxforge installation is incomplete "
            "(it ships as package data in framework/plugin_template). Reinstall jaxforge.")
    target = Path(directory) / name
    if target.exists():
        raise JaxforgeError(f"{target} already exists; choose another NAME or --dir.")
    shutil.copytree(TEMPLATE, target, ignore=_IGNORED)
    (target / TEMPLATE_PACKAGE).rename(target / package)
    for path in sorted(target.rglob("*")):
        if path.is_file():
            text = path.read_text()
            renamed = (text.replace(TEMPLATE_DISTRIBUTION, name)
                       .replace(TEMPLATE_PACKAGE, package))
            if renamed != text:
                path.write_text(renamed)
    return target


NEXT_STEPS = """\
Created the plugin package {name} in {target}. Next:
  pip install -e "{target}[test]"
  jaxforge plugins check '{package}:*'
  python -m pytest {target}/tests
  jaxforge train --config {target}/experiments/spirals.py --workdir runs/spirals"""
"""What `jaxforge new-plugin` prints; `next_steps` fills it in, the docs quote it."""


def next_steps(target: str | Path, name: str) -> str:
    """The message after `new_plugin(name, ...)` created `target`: how to install, check, test
    and train the new package."""
    return NEXT_STEPS.format(name=name, target=target, package=normalize_distribution(name))
