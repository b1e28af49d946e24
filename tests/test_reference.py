"""Field meanings (`framework.fields`, `framework.field_docs`) and the generated reference pages
(tools/reference.py): every field has a meaning, and the committed pages are current."""

import copy
import difflib
import importlib.util
import pickle
import shutil
from pathlib import Path

import ml_collections
import pytest
from ml_collections.config_dict import placeholder

import framework
from framework import config as config_lib
from framework.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _module(ROOT / "tools" / "reference.py", "jaxforge_tools_reference")


# The helper ------------------------------------------------------------------------------------


def test_fields_is_an_ordinary_configdict_that_carries_meanings():
    config = framework.fields(width=(64, "Units."), sizes=((1, 2), "Blocks."),
                              steps=(placeholder(int), "Optional."))
    assert type(config) is ml_collections.ConfigDict
    plain = ml_collections.ConfigDict({"width": 64, "sizes": (1, 2), "steps": placeholder(int)})
    assert config.to_dict() == plain.to_dict() and list(config._fields) == list(plain._fields)
    assert config.get_type("steps") is int and config.steps is None
    assert framework.field_docs(config) == {"width": "Units.", "sizes": "Blocks.",
                                            "steps": "Optional."}
    config.width = 8  # Values change; meanings stay.
    config.lock()
    assert framework.field_docs(config)["width"] == "Units."
    for copied in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert copied == config and framework.field_docs(copied) == {}  # Copies: values only.


def test_field_docs_nests_sections_and_plain_configdicts_have_none():
    config = framework.fields(seed=(0, "Seed."), train=(framework.fields(
        steps=(10, "Steps.")), "The loop."), plain=(ml_collections.ConfigDict({"a": 1}), "P."))
    assert framework.field_docs(config) == {"seed": "Seed.", "train": "The loop.",
                                            "train.steps": "Steps.", "plain": "P."}
    assert framework.field_docs(ml_collections.ConfigDict({"a": {"b": 1}})) == {}


def test_fields_extends_sections_in_place():
    base = framework.fields(a=(1, "A."), b=(2, "B."))
    extended = framework.fields(base, ml_collections.ConfigDict({"c": 3}), a=(5, "New A."),
                                d=(4, "D."))
    assert list(extended._fields) == ["a", "b", "c", "d"] and extended.a == 5
    assert framework.field_docs(extended) == {"a": "New A.", "b": "B.", "d": "D."}


@pytest.mark.parametrize("entry", [1, (1,), (1, 2), [1, "list"]])
def test_fields_wants_a_default_and_a_meaning(entry):
    with pytest.raises(TypeError, match=r"takes \(default, meaning\)"):
        framework.fields(width=entry)
    with pytest.raises(TypeError, match="takes ConfigDicts before"):
        framework.fields({"width": 1})


def _paths(config, prefix=""):
    for name, value in config._fields.items():
        yield prefix + name
        if isinstance(value, ml_collections.ConfigDict):
            yield from _paths(value, f"{prefix}{name}.")


def _template_plugins():
    package = ROOT / "framework" / "plugin_template" / "jaxforge_example"
    for name, attribute in (("models", "residual_mlp"), ("datasets", "spirals"),
                            ("regularizers", "z_loss")):
        module = _module(package / f"{name}.py", f"jaxforge_template_{name}")
        yield f"template:{attribute}", getattr(module, attribute)


def test_every_core_and_builtin_plugin_field_has_a_meaning():
    base = config_lib.base_config()
    docs = config_lib.field_docs(base)
    missing = [f"config.{path}" for path in _paths(base) if not docs.get(path)]
    plugins = [(f"jaxforge:{name}", plugin)
               for found in reference.builtin_plugins().values() for name, plugin in found]
    assert len(plugins) >= 20
    for plugin_id, plugin in [*plugins, *_template_plugins()]:
        defaults = plugin.default_config()
        docs = framework.field_docs(defaults)
        missing += [f"{plugin_id} {path}" for path in _paths(defaults) if not docs.get(path)]
    assert not missing, f"Fields without a meaning (write them with framework.fields): {missing}"


def test_plugins_show_prints_each_field_with_its_meaning(capsys):
    assert main(["plugins", "show", "cnn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    meanings = framework.field_docs(framework.registry.load("models", "cnn").default_config())
    assert meanings
    for field, meaning in meanings.items():
        assert any(line.strip().startswith(f"{field} = ") and line.endswith(f"  # {meaning}")
                   for line in lines), (field, lines)


def test_plugins_show_without_meanings(capsys):
    plugin = framework.Plugin(build=lambda config: None, api_version=1,
                              default_config=lambda: ml_collections.ConfigDict({"size": 3}))
    with framework.registry.registered("callbacks", "plain", plugin):
        assert main(["plugins", "show", "local:plain"]) == 0
    assert "\n  size = 3\n" in capsys.readouterr().out


# The generated pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_committed_reference_page_is_current(page):
    path = ROOT / page
    committed = path.read_text() if path.is_file() else ""
    current = reference.PAGES[page]()
    if committed != current:
        diff = difflib.unified_diff(committed.splitlines(), current.splitlines(),
                                    f"{page} (committed)", f"{page} (from the code now)",
                                    lineterm="", n=1)
        pytest.fail(f"{page} is stale: run `python tools/reference.py` and commit the result.\n"
                    + "\n".join(list(diff)[:40]), pytrace=False)


def test_check_names_the_stale_page(tmp_path, monkeypatch, capsys):
    for page in reference.PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    assert reference.main(["--check"]) == 0
    edited = tmp_path / "docs" / "reference" / "cli.md"
    lines = edited.read_text().splitlines(keepends=True)
    edited.write_text("".join([*lines[:5], "edited by hand\n", *lines[6:]]))
    assert reference.main(["--check"]) == 1
    assert capsys.readouterr().err == ("docs/reference/cli.md is stale: run `python "
                                       "tools/reference.py` and commit the result.\n")
    assert reference.main([]) == 0 and reference.main(["--check"]) == 0  # Rewritten.


def test_new_plugin_next_steps_are_one_text(tmp_path, capsys):
    assert main(["new-plugin", "acme-vision", "--dir", str(tmp_path)]) == 0
    from framework import scaffold

    printed = capsys.readouterr().out
    assert printed == scaffold.next_steps(tmp_path / "acme-vision", "acme-vision") + "\n"
    assert f'pip install -e "{tmp_path / "acme-vision"}[test]"' in printed
    assert scaffold.next_steps("../acme-vision", "acme-vision") in reference.cli_reference()
