"""`jaxforge new-plugin` from an installed wheel, not from a checkout: the plugin template ships
as package data.

The wheel is built from a copy of this checkout and installed into a fresh virtual environment
that reuses this environment's dependencies through a `.pth` line naming its site-packages. A plain
path line is only appended to sys.path: that folder's own .pth files, among them the finder of an
editable jaxforge, are not run, so the new environment's jaxforge is the one that imports (checked).
Offline: pip never looks at an index.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Left out of the copy that is built: caches, environments, build outputs, runs.
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".ruff_cache", "runs")


def run(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["XLA_FLAGS"] = ""  # One CPU device, as a user's machine.
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_new_plugin_from_an_installed_wheel(tmp_path):
    source, wheels, venv, work = (tmp_path / name for name in ("src", "wheels", "venv", "work"))
    shutil.copytree(ROOT, source, ignore=IGNORED)  # Building in place would leave build/ here.
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", wheels, source, cwd=tmp_path)
    wheel, = wheels.glob("jaxforge-*.whl")

    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                           "['purelib'])", cwd=tmp_path).strip())
    outer = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in outer))

    # pip comes from this environment too; it installs into the new one (its sys.prefix).
    # --ignore-installed: the jaxforge of this environment, visible there, is neither replaced
    # nor uninstalled.
    install = (python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
               "--no-build-isolation")
    run(*install, wheel, cwd=tmp_path)
    where = run(python, "-c", "import framework, framework.scaffold as s, importlib.metadata as m; "
                "print(framework.__file__); print(s.TEMPLATE); "
                "print(m.distribution('jaxforge').locate_file('framework'))", cwd=tmp_path)
    for path in where.split():
        assert Path(path).is_relative_to(venv), where

    created = run(venv / "bin" / "jaxforge", "new-plugin", "acme-vision", "--dir", work,
                  cwd=tmp_path)
    assert f'pip install -e "{work / "acme-vision"}[test]"' in created
    run(*install, "-e", work / "acme-vision", cwd=tmp_path)
    checked = run(venv / "bin" / "jaxforge", "plugins", "check", "acme_vision:*", cwd=tmp_path)
    assert "3 plugin(s) checked: 3 passed, 0 failed." in checked
