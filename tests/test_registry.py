"""The plugin registry: discovery from metadata, lazy loading, names, failures, switches."""

import json
import subprocess
import sys
import textwrap

import pytest

from framework.registry import (
    PLUGIN_API_VERSION,
    PluginAPIVersionWarning,
    PluginError,
    Registry,
    close_matches,
    registry,
)

PLUGIN_MODULE = """
import ml_collections
LOADED = True
class Tiny:
    api_version = {api_version}
    @staticmethod
    def default_config():
        return ml_collections.ConfigDict({{"width": 3}})
    @staticmethod
    def build(config, metadata, dtype):
        raise NotImplementedError
tiny = Tiny()
"""


def make_distribution(root, name, entry_points, modules, version="1.0"):
    """A distribution on `root` as pip would install it: a dist-info folder and modules."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, items in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in items.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Two third-party distributions: `acme` (tiny, broken) and `other` (tiny again)."""
    for variable in ("JAXFORGE_PLUGINS", "JAXFORGE_DISABLE_PLUGINS",
                     "JAXFORGE_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(variable, raising=False)
    make_distribution(tmp_path, "acme-plugins", {
        "jaxforge.models": {"tiny": "acme_models:tiny", "broken": "acme_broken:thing",
                            "old": "acme_old:tiny"},
        "jaxforge.datasets": {"tinyset": "acme_models:tiny"},
    }, {
        "acme_models": PLUGIN_MODULE.format(api_version=PLUGIN_API_VERSION),
        "acme_old": PLUGIN_MODULE.format(api_version=0),
        "acme_broken": "raise ImportError('libfoo.so not found')\n",
    })
    make_distribution(tmp_path, "other_dist", {"jaxforge.models": {"tiny": "other_models:tiny"}},
                      {"other_models": PLUGIN_MODULE.format(api_version=PLUGIN_API_VERSION)})
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("acme_models", "acme_old", "acme_broken", "other_models"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return Registry()


def test_discovery_reads_metadata_without_importing(third_party):
    ids = {info.id for info in third_party.infos("models")}
    assert {"acme_plugins:tiny", "acme_plugins:broken", "other_dist:tiny", "jaxforge:cnn"} <= ids
    assert "acme_models" not in sys.modules and "acme_broken" not in sys.modules
    info = next(i for i in third_party.infos("models") if i.id == "acme_plugins:tiny")
    assert (info.distribution, info.version, info.status) == ("acme_plugins", "1.0", "available")


def test_loading_imports_lazily_and_once(third_party):
    plugin = third_party.load("models", "acme_plugins:tiny")
    assert "acme_models" in sys.modules
    assert plugin.default_config().width == 3
    assert third_party.load("models", "acme_plugins:tiny") is plugin
    assert third_party.resolve("models", "acme_plugins:tiny").status == "loaded"


def test_ambiguous_bare_name_lists_both_ids(third_party):
    with pytest.raises(PluginError, match="ambiguous") as error:
        third_party.load("models", "tiny")
    assert "acme_plugins:tiny" in str(error.value) and "other_dist:tiny" in str(error.value)
    assert third_party.load("models", "other_dist:tiny").default_config().width == 3


def test_unique_bare_name_and_kinds_are_separate(third_party):
    assert third_party.resolve("datasets", "tinyset").id == "acme_plugins:tinyset"
    assert third_party.resolve("models", "cnn").id == "jaxforge:cnn"


def test_unknown_name_suggests_close_matches(third_party):
    with pytest.raises(PluginError) as error:
        third_party.resolve("models", "resnt")
    message = str(error.value)
    assert "Unknown model plugin 'resnt'" in message and "Did you mean 'resnet'" in message
    assert "jaxforge:cnn" in message  # The installed ids are listed.


def test_broken_plugin_is_isolated_and_named(third_party):
    with pytest.raises(PluginError) as error:
        third_party.load("models", "broken")
    message = str(error.value)
    for part in ("acme_plugins:broken", "acme-plugins 1.0", "acme_broken:thing",
                 "libfoo.so not found"):
        assert part in message
    assert isinstance(error.value.__cause__, ImportError)
    info = third_party.resolve("models", "broken")
    assert info.status == "failed" and "ImportError" in info.reason
    with pytest.raises(PluginError, match="failed to load"):  # Again, without re-importing.
        third_party.load("models", "broken")
    assert third_party.load("models", "acme_plugins:tiny") is not None  # Others still work.


def test_api_version_mismatch_is_reported_not_fatal(third_party):
    with pytest.warns(PluginAPIVersionWarning, match="plugin API version 0"):
        plugin = third_party.load("models", "old")
    assert plugin.default_config().width == 3
    assert "version 0" in third_party.resolve("models", "old").reason


def test_disable_autoload_keeps_only_builtins(third_party, monkeypatch):
    monkeypatch.setenv("JAXFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")
    third_party.refresh()
    distributions = {i.distribution for i in third_party.infos()}
    assert distributions == {"jaxforge"}


def test_allow_list_and_block_list(third_party, monkeypatch):
    monkeypatch.setenv("JAXFORGE_PLUGINS", "other_dist")
    third_party.refresh()
    assert third_party.resolve("models", "tiny").id == "other_dist:tiny"  # No longer ambiguous.
    with pytest.raises(PluginError, match="disabled .not in JAXFORGE_PLUGINS"):
        third_party.load("models", "acme_plugins:tiny")
    assert third_party.resolve("models", "cnn").status != "disabled"  # Built-ins stay.
    monkeypatch.delenv("JAXFORGE_PLUGINS")
    monkeypatch.setenv("JAXFORGE_DISABLE_PLUGINS", "acme_plugins:*,jaxforge:mlp")
    third_party.refresh()
    with pytest.raises(PluginError, match="JAXFORGE_DISABLE_PLUGINS"):
        third_party.load("models", "mlp")
    assert third_party.resolve("models", "tiny").id == "other_dist:tiny"


def test_in_process_registration_decorator_and_context():
    import ml_collections

    import framework

    @framework.register_model("decorated", default_config=lambda: ml_collections.ConfigDict(
        {"width": 5}))
    def build(config, metadata, dtype):
        """A decorated model."""

    try:
        info = framework.registry.resolve("models", "decorated")
        assert info.id == "local:decorated"
        assert framework.registry.load("models", "decorated").default_config().width == 5
    finally:
        framework.registry.unregister("models", "decorated")
    plugin = framework.Plugin(build=build, api_version=PLUGIN_API_VERSION)
    with framework.registry.registered("models", "temporary", plugin):
        assert framework.registry.load("models", "temporary") is plugin
    with pytest.raises(PluginError, match="Unknown model plugin 'temporary'"):
        framework.registry.load("models", "temporary")


def test_registering_a_non_plugin_says_what_is_missing():
    import framework

    with pytest.raises(TypeError, match="no callable build, default_config"):
        framework.registry.register("models", "nope", object())


def test_plugins_list_imports_no_plugin_and_no_jax():
    code = ("import sys; from framework.cli import main; main(['plugins', 'list', '--json']);"
            "print([m for m in sys.modules if m.split('.')[0] in ('plugins', 'jax', 'flax')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().endswith("[]")
    assert '"id": "jaxforge:cnn"' in result.stdout



def test_find_a_plugin_of_any_kind(third_party):
    assert third_party.find("tinyset").kind == "datasets"
    assert third_party.find("cnn", kind="model").id == "jaxforge:cnn"
    with pytest.raises(PluginError, match="'tiny' is ambiguous"):
        third_party.find("tiny")  # Two distributions provide the model `tiny`.
    with pytest.raises(PluginError, match=r"No plugin named 'tinyst'\. Did you mean 'tinyset' "
                                          r"\(dataset\) or"):
        third_party.find("tinyst")
    with pytest.raises(PluginError, match=r"Did you mean 'acme_plugins:tinyset' \(dataset\) or"):
        third_party.find("acme_plugins:tinyst")
    plugin = third_party.load("models", "acme_plugins:tiny")
    with third_party.registered("datasets", "cnn", plugin), pytest.raises(
            PluginError, match=r"'cnn' names plugins of several kinds \(models, datasets\)"):
        third_party.find("cnn")


def test_every_kind_comes_from_the_one_table():
    import framework
    from framework import config, kinds
    from framework.cli import _parser
    from framework.registry import KINDS

    assert KINDS == kinds.NAMES == tuple(kind.name for kind in kinds.KINDS)
    base = config.base_config()
    table = kinds.build_table()
    for kind in kinds.KINDS:
        assert kinds.lookup(kind.singular) is kinds.lookup(kind.name) is kind
        assert callable(getattr(framework, kind.decorator))
        assert kind.section in base and ("name" in base[kind.section]) != kind.mapping
        assert f"| {kind.name} " in table
    assert max(len(line) for line in framework.plugin.__doc__.splitlines()) <= 100
    with pytest.raises(SystemExit):
        _parser().parse_args(["plugins", "list", "--kind", "widgets"])
    assert _parser().parse_args(["plugins", "list", "--kind", "augmentation"]).kind


def test_a_decorator_accepts_only_its_kinds_fields():
    import framework

    with pytest.raises(TypeError, match="register_dataset\\(\\) got unexpected keyword "
                                        "arguments loss"):
        framework.register_dataset("data", loss=lambda outputs, batch: None)


@pytest.mark.parametrize("word, candidates, expected", [
    ("cnnn", ["cnn", "cnn_nnx", "mlp", "resnet"], ["cnn", "cnn_nnx"]),
    ("resnt", ["cnn", "resnet"], ["resnet"]),
    ("CNN", ["cnn", "mlp"], ["cnn"]),
    ("num_step", ["num_steps", "num_epochs"], ["num_steps"]),
    ("lerning_rate", ["learning_rate", "end_learning_rate", "b1"],
     ["learning_rate", "end_learning_rate"]),
    ("acme_plugins:tinyst", ["acme_plugins:tinyset", "acme_plugins:tiny", "other_dist:tiny"],
     ["acme_plugins:tinyset", "acme_plugins:tiny"]),
    # Not alike enough: nothing rather than a far-fetched guess.
    ("init_from", ["on_nonfinite", "async_save", "num_steps"], []),
    ("nope", ["on_nonfinite"], []),
    ("lr", ["l1", "l2", "learning_rate"], []),
    ("acme_plugins:zzz", ["acme_plugins:tiny"], []),  # A shared prefix does not count.
    ("other:tiny", ["acme_plugins:tiny"], []),
])
def test_close_matches_suggest_only_likely_typos(word, candidates, expected):
    assert close_matches(word, candidates) == expected


def test_a_distribution_is_shown_as_published_and_its_id_normalised(third_party, monkeypatch):
    info = third_party.resolve("models", "acme_plugins:tiny")
    assert (info.id, info.distribution, info.distribution_name) == (
        "acme_plugins:tiny", "acme_plugins", "acme-plugins")
    assert info.as_dict()["distribution"] == "acme-plugins"
    assert info.as_dict()["id"] == "acme_plugins:tiny"
    assert third_party.resolve("models", "other_dist:tiny").distribution_name == "other_dist"
    # The published spelling names the same plugins, in ids and in the environment switches.
    assert third_party.resolve("models", "acme-plugins:tiny") is info
    monkeypatch.setenv("JAXFORGE_PLUGINS", "acme-plugins")
    third_party.refresh()
    assert third_party.resolve("models", "tiny").id == "acme_plugins:tiny"


def test_the_cli_names_the_published_distribution(third_party, capsys):
    from framework.cli import main

    with registry.isolated():  # Discovers the fixture's distributions on sys.path.
        assert main(["plugins", "list", "--kind", "model"]) == 0
        listing = capsys.readouterr().out
        row = next(line for line in listing.splitlines() if line.startswith("acme_plugins:tiny"))
        assert row.split()[:4] == ["acme_plugins:tiny", "model", "acme-plugins", "1.0"]
        assert main(["plugins", "list", "--json"]) == 0
        rows = {p["id"]: p for p in json.loads(capsys.readouterr().out)}
        assert rows["acme_plugins:tiny"]["distribution"] == "acme-plugins"
        assert rows["jaxforge:cnn"]["distribution"] == "jaxforge"
        assert main(["plugins", "show", "acme_plugins:tiny"]) == 0
        assert "distribution: acme-plugins 1.0\n" in capsys.readouterr().out
        assert main(["plugins", "show", "acme_plugins:broken"]) == 2
        assert "(distribution acme-plugins 1.0, entry point" in capsys.readouterr().err
        assert main(["plugins", "check", "acme-plugins:broken"]) == 1
        assert "acme_plugins:broken (model, acme-plugins 1.0, entry point" in (
            capsys.readouterr().out)
