"""The example plugin package (framework/plugin_template) and `jaxforge new-plugin`, end to end:
install with pip, list, check, train from a config alone, run the package's own tests, uninstall."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.cli import main

TEMPLATE = Path(__file__).resolve().parent.parent / "framework" / "plugin_template"
ENV = {**os.environ, "XLA_FLAGS": ""}  # One CPU device, as a user's machine.


def run(*args, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


def jaxforge(*args, cwd=None):
    return run("-m", "framework.cli", *args, cwd=cwd)


def files(root):
    return {p.relative_to(root): p for p in root.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts and ".egg-info" not in str(p)}


def test_new_plugin_copies_the_template_renamed_everywhere(tmp_path, capsys):
    assert main(["new-plugin", "Acme-Spirals", "--dir", str(tmp_path)]) == 0
    created = tmp_path / "Acme-Spirals"
    assert f"Created the plugin package Acme-Spirals in {created}" in capsys.readouterr().out
    new, original = files(created), files(TEMPLATE)
    assert {Path(str(p).replace("acme_spirals", "jaxforge_example")) for p in new} == set(original)
    for path, file in new.items():
        text = file.read_text()
        assert "jaxforge_example" not in text and "jaxforge-example" not in text, path
        template_path = Path(str(path).replace("acme_spirals", "jaxforge_example"))
        assert (text.replace("Acme-Spirals", "jaxforge-example")
                .replace("acme_spirals", "jaxforge_example")) == original[template_path].read_text()
    pyproject = (created / "pyproject.toml").read_text()
    assert 'name = "Acme-Spirals"' in pyproject
    assert 'residual_mlp = "acme_spirals.models:residual_mlp"' in pyproject
    assert '"acme_spirals:spirals"' in (created / "experiments" / "spirals.py").read_text()


@pytest.mark.parametrize("name, message", [
    ("9lives", "is not a usable package name"),
    ("my plugins", "is not a usable package name"),
    ("plugins", "would shadow jaxforge's own module"),
    ("json", "would shadow Python's own module"),
])
def test_new_plugin_rejects_names_that_cannot_work(tmp_path, capsys, name, message):
    assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_new_plugin_never_overwrites(tmp_path, capsys):
    (tmp_path / "acme").mkdir()
    assert main(["new-plugin", "acme", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def installed(distribution):
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_example_package_installs_checks_trains_and_uninstalls(tmp_path):
    distributions = ["jaxforge-example", "acme-spirals"]
    already = [d for d in distributions if installed(d)]
    assert not already, (f"{already} is installed in this environment; this test installs and "
                         "uninstalls it, so uninstall it first.")
    example = tmp_path / "jaxforge-example"  # A copy, so that building leaves the repo clean.
    shutil.copytree(TEMPLATE, example, ignore=shutil.ignore_patterns("__pycache__"))
    created = jaxforge("new-plugin", "acme-spirals", "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    install = run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                  str(example), str(tmp_path / "acme-spirals"))
    try:
        assert install.returncode == 0, install.stdout + install.stderr
        listing = jaxforge("plugins", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        listed = {p["id"]: p for p in json.loads(listing.stdout)}
        for package, published in (("jaxforge_example", "jaxforge-example"),
                                   ("acme_spirals", "acme-spirals")):
            for name in ("residual_mlp", "spirals", "z_loss"):
                assert listed[f"{package}:{name}"]["status"] == "available"
                # The id is normalised; the distribution is shown as its author published it.
                assert listed[f"{package}:{name}"]["distribution"] == published

        check = jaxforge("plugins", "check", "jaxforge_example:*")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "3 plugin(s) checked: 3 passed, 0 failed." in check.stdout
        assert "jaxforge_example:spirals (dataset, jaxforge-example 0." in check.stdout

        workdir = tmp_path / "run"
        trained = jaxforge("train", "--config", str(example / "experiments" / "spirals.py"),
                           "--workdir", str(workdir), cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["final"]["eval/accuracy"] > 0.95
        plugins = {p["id"]: p for p in json.loads((workdir / "plugins.json").read_text())}
        assert {"jaxforge_example:residual_mlp", "jaxforge_example:spirals",
                "jaxforge_example:z_loss"} <= set(plugins)
        assert plugins["jaxforge_example:spirals"]["distribution"] == "jaxforge-example"

        # The renamed copy passes its own tests (config errors, z-loss, training); their
        # conformance part is the `plugins check` above, on the same plugins under another name.
        tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not test_conformance",
                    "tests", cwd=tmp_path / "acme-spirals")
        assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    finally:
        uninstall = run("-m", "pip", "uninstall", "--yes", *distributions)
    assert uninstall.returncode == 0, uninstall.stderr
    after = jaxforge("plugins", "list", "--json")
    assert not {p["distribution"] for p in json.loads(after.stdout)} & set(distributions)

