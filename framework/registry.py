"""The plugin registry: discovery from entry points, lazy loading by name.

Discovery reads package metadata only, so listing plugins never imports plugin code (and never
starts JAX). A plugin is imported the first time a run asks for it. One broken plugin never
breaks the others: its failure is recorded and raised, chained, only when it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import importlib.metadata
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from framework import kinds as kinds_lib
from framework.errors import JaxforgeError

PLUGIN_API_VERSION = 1
"""The plugin contract version. Bumped when a plugin kind's contract changes incompatibly."""

KINDS = kinds_lib.NAMES  # The plural kind names, from the table in framework.kinds.
BUILTIN_DISTRIBUTION = "jaxforge"
LOCAL_DISTRIBUTION = "local"

_REQUIRED_ATTRIBUTES = ("build", "default_config")


class PluginError(JaxforgeError):
    """A plugin cannot be found, is ambiguous, disabled or failed to load."""


class PluginAPIVersionWarning(UserWarning):
    """A plugin was written for another plugin API version; it may still work."""


@dataclasses.dataclass
class PluginInfo:
    """What the registry knows about one plugin, before and after it is loaded."""

    kind: str
    name: str
    distribution: str
    version: str
    entry_point: str  # "module:attribute", or "<registered in-process>".
    status: str = "available"  # available | loaded | failed | disabled
    reason: str = ""  # Why a plugin failed or is disabled; API-version notes when loaded.
    obj: Any = dataclasses.field(default=None, repr=False)
    error: BaseException | None = dataclasses.field(default=None, repr=False)
    # The distribution's name as its author published it (the `Name` of its metadata, e.g.
    # `mnist1d-jaxforge`); `distribution` is its normalised form, the prefix of the id.
    published_name: str = ""

    @property
    def id(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def distribution_name(self) -> str:
        """The distribution as users install it (`mnist1d-jaxforge`), for messages and
        listings; the id keeps the normalised form (`mnist1d_jaxforge:name`)."""
        return self.published_name or self.distribution

    @property
    def kind_singular(self) -> str:
        """`model` for a plugin of kind `models`."""
        return kind_of(self.kind).singular

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id, "kind": self.kind, "name": self.name,
            "distribution": self.distribution_name, "version": self.version,
            "entry_point": self.entry_point, "status": self.status, "reason": self.reason,
        }


def normalize_distribution(name: str) -> str:
    """How a distribution name appears in plugin ids: `Acme-Vision` -> `acme_vision`."""
    return re.sub(r"[-_.]+", "_", name).lower()


def normalize_id(text: str) -> str:
    """A `dist:name` id (or id glob) with its distribution part normalised, so that the name a
    distribution was published under works too: `acme-vision:*` -> `acme_vision:*`; a bare name
    is returned as it is."""
    if ":" not in text:
        return text
    distribution, name = text.split(":", 1)
    return f"{normalize_distribution(distribution)}:{name}"


CLOSE_MATCH_CUTOFF = 0.7
"""How alike (difflib's ratio, 0..1) a name must be to a typo of it to be suggested."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates that `word` is probably a typo of, closest first (at most `n`).

    The one rule for every "did you mean" of jaxforge: plugin names and ids (`resolve`, `find`,
    the config's plugin names) and config keys. Names are compared without case; a `dist:name`
    id part by part, so that a shared distribution prefix (or, for config keys, a shared
    section) cannot make unrelated names look alike; a candidate is suggested only when every
    part is at least `CLOSE_MATCH_CUTOFF` alike (`cnnn` -> `cnn`, `cnn_nnx`; `init_from` ->
    nothing, not `on_nonfinite`).
    """
    def similarity(candidate: str) -> float:
        ours, theirs = word.lower().split(":"), candidate.lower().split(":")
        if len(ours) != len(theirs):
            return 0.0
        return min(difflib.SequenceMatcher(None, a, b).ratio() for a, b in zip(ours, theirs))

    scored = sorted(((similarity(c), c) for c in set(candidates) if c != word),
                    key=lambda pair: (-pair[0], pair[1]))
    return [c for score, c in scored if score >= CLOSE_MATCH_CUTOFF][:n]


def _env_patterns(variable: str) -> list[str]:
    return [p.strip() for p in os.environ.get(variable, "").split(",") if p.strip()]


def _matches(info: PluginInfo, patterns: list[str]) -> bool:
    """A pattern is an id glob (`dist:name`, `dist:*`) or a bare distribution name, as published
    (`acme-vision`) or normalised (`acme_vision`)."""
    return any(fnmatch.fnmatch(info.id, normalize_id(p))
               or normalize_distribution(p) == info.distribution for p in patterns)


class Registry:
    """All plugins of all kinds. Use the module-level `registry` singleton."""

    def __init__(self) -> None:
        self._discovered: dict[str, dict[str, PluginInfo]] | None = None
        self._local: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}

    # Discovery -------------------------------------------------------------------------------

    def _discover(self) -> dict[str, dict[str, PluginInfo]]:
        if self._discovered is not None:
            return self._discovered
        found: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}
        groups = {kind.group: kind.name for kind in kinds_lib.KINDS}
        autoload = os.environ.get("JAXFORGE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        for dist in importlib.metadata.distributions():
            try:
                published = dist.metadata["Name"] or ""
                dist_name = normalize_distribution(published)
                entry_points = [ep for ep in dist.entry_points if ep.group in groups]
            except Exception:  # Malformed metadata of an unrelated package: never fatal.
                continue
            if not entry_points or (not autoload and dist_name != BUILTIN_DISTRIBUTION):
                continue
            for ep in entry_points:
                info = PluginInfo(groups[ep.group], ep.name, dist_name, dist.version, ep.value,
                                  published_name=published)
                # A distribution seen twice on sys.path (e.g. editable + installed): first wins.
                found[info.kind].setdefault(info.id, info)
        self._apply_environment_switches(found)
        self._discovered = found
        return found

    @staticmethod
    def _apply_environment_switches(found: dict[str, dict[str, PluginInfo]]) -> None:
        allowed = _env_patterns("JAXFORGE_PLUGINS")
        blocked = _env_patterns("JAXFORGE_DISABLE_PLUGINS")
        for infos in found.values():
            for info in infos.values():
                if _matches(info, blocked):
                    info.status, info.reason = "disabled", "blocked by JAXFORGE_DISABLE_PLUGINS"
                elif (allowed and info.distribution != BUILTIN_DISTRIBUTION
                      and not _matches(info, allowed)):
                    info.status, info.reason = "disabled", "not in JAXFORGE_PLUGINS"

    def refresh(self) -> None:
        """Forget discovered plugins so that newly installed distributions are found."""
        self._discovered = None

    def infos(self, kind: str | kinds_lib.Kind | None = None) -> list[PluginInfo]:
        """Every plugin (of one kind, or all), loaded or not, sorted by kind and id."""
        kinds = [check_kind(kind)] if kind else list(KINDS)
        discovered = self._discover()
        infos = [i for k in kinds for i in [*discovered[k].values(), *self._local[k].values()]]
        return sorted(infos, key=lambda i: (KINDS.index(i.kind), i.id))

    # Resolution ------------------------------------------------------------------------------

    def resolve(self, kind: str | kinds_lib.Kind, name: str) -> PluginInfo:
        """The one plugin that `name` (a bare name or a `dist:name` id) refers to."""
        kind = check_kind(kind)
        singular = kinds_lib.lookup(kind).singular
        infos = self.infos(kind)
        matches = [i for i in infos if _named(i, name)]
        usable = [i for i in matches if i.status != "disabled"]
        if len(usable) == 1:
            return usable[0]
        if len(usable) > 1:
            ids = ", ".join(i.id for i in usable)
            raise PluginError(
                f"The {singular} name {name!r} is ambiguous: it is provided by {ids}. "
                f"Use the full id, e.g. {usable[0].id!r}.")
        if matches:
            info = matches[0]
            raise PluginError(f"The {singular} plugin {info.id!r} is disabled ({info.reason}).")
        installed = ", ".join(i.id for i in infos if i.status != "disabled") or "none"
        raise PluginError(f"Unknown {singular} plugin {name!r}.{_did_you_mean(name, infos)} "
                          f"Installed {kind}: {installed}.")

    def find(self, name: str, kind: str | kinds_lib.Kind | None = None) -> PluginInfo:
        """The one plugin `name` (a bare name or a `dist:name` id) refers to, of `kind` or, when
        `kind` is None, of whichever kind has a plugin of that name; PluginError otherwise."""
        if kind is not None:
            return self.resolve(kind, name)
        found = [k for k in KINDS if any(_named(i, name) for i in self.infos(k))]
        if not found:
            hint = _did_you_mean(name, self.infos(), with_kind=True)
            raise PluginError(f"No plugin named {name!r}.{hint} `jaxforge plugins list` shows "
                              "them all.")
        if len(found) > 1:
            raise PluginError(f"{name!r} names plugins of several kinds ({', '.join(found)}); "
                              "say which kind (`--kind` in `jaxforge plugins`, (kind, id) in "
                              "framework.testing).")
        return self.resolve(found[0], name)

    def load(self, kind: str | kinds_lib.Kind, name: str) -> Any:
        """Import (once) and return the plugin object that `name` refers to."""
        info = self.resolve(kind, name)
        if info.status == "failed":
            raise _load_error(info) from info.error
        if info.obj is None:
            try:
                obj = importlib.metadata.EntryPoint(
                    name=info.name, value=info.entry_point, group=kind_of(kind).group).load()
                check_contract(info, obj)
            except Exception as error:
                info.status, info.error = "failed", error
                info.reason = f"{type(error).__name__}: {error}"
                raise _load_error(info) from error
            info.obj, info.status = obj, "loaded"
            _check_api_version(info)
        return info.obj

    # In-process registration -----------------------------------------------------------------

    def register(self, kind: str, name: str, obj: Any) -> PluginInfo:
        """Register a plugin object under `local:<name>`, e.g. from a notebook or a test."""
        kind = check_kind(kind)
        info = PluginInfo(kind, name, LOCAL_DISTRIBUTION, "", "<registered in-process>")
        check_contract(info, obj)
        info.obj, info.status = obj, "loaded"
        _check_api_version(info)
        self._local[kind][info.id] = info
        return info

    def unregister(self, kind: str, name: str) -> None:
        self._local[check_kind(kind)].pop(f"{LOCAL_DISTRIBUTION}:{name}", None)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[Registry]:
        """For tests: discover installed plugins afresh and keep in-process registrations made
        in the block to the block; afterwards the registry is as it was before."""
        discovered, local = self._discovered, self._local
        self._discovered, self._local = None, {kind: dict(infos) for kind, infos in local.items()}
        try:
            yield self
        finally:
            self._discovered, self._local = discovered, local

    @contextlib.contextmanager
    def registered(self, kind: str, name: str, obj: Any) -> Iterator[PluginInfo]:
        """Register a plugin for the duration of a `with` block."""
        previous = self._local[check_kind(kind)].get(f"{LOCAL_DISTRIBUTION}:{name}")
        info = self.register(kind, name, obj)
        try:
            yield info
        finally:
            self.unregister(kind, name)
            if previous is not None:
                self._local[kind][previous.id] = previous


def kind_of(kind: str | kinds_lib.Kind) -> kinds_lib.Kind:
    """The kind called `kind`: plural (`models`), singular (`model`) or a `Kind`; PluginError
    otherwise."""
    found = kinds_lib.lookup(kind)
    if found is None:
        raise PluginError(f"Unknown plugin kind {kind!r}; the kinds are {', '.join(KINDS)}.")
    return found


def check_kind(kind: str | kinds_lib.Kind) -> str:
    """The plural kind (`models`) for a kind or its singular (`model`); PluginError otherwise."""
    return kind_of(kind).name


def _named(info: PluginInfo, name: str) -> bool:
    """Whether `name`, a `dist:name` id (the distribution as published or normalised) or a bare
    name, names this plugin."""
    return info.id == normalize_id(name) if ":" in name else info.name == name


def _did_you_mean(name: str, infos: list[PluginInfo], with_kind: bool = False) -> str:
    """` Did you mean 'cnn'?` (with the kind: `'cnn' (model)`) for close names, else ``."""
    label: dict[str, set[str]] = {}
    for info in infos:
        candidate = info.id if ":" in name else info.name
        label.setdefault(candidate, set()).add(info.kind_singular)
    close = close_matches(normalize_id(name), label)
    if not close:
        return ""
    shown = [repr(c) + (f" ({', '.join(sorted(label[c]))})" if with_kind else "") for c in close]
    return f" Did you mean {' or '.join(shown)}?"


def check_contract(info: PluginInfo, obj: Any) -> None:
    """Raise TypeError unless `obj` has what every plugin has: build() and default_config()."""
    missing = [a for a in _REQUIRED_ATTRIBUTES if not callable(getattr(obj, a, None))]
    if missing:
        raise TypeError(
            f"{info.entry_point} is a {type(obj).__name__}, not a {info.kind_singular} plugin: it "
            f"has no callable {', '.join(missing)}. Export a framework.Plugin (or an object with "
            "build() and default_config()).")


def _check_api_version(info: PluginInfo) -> None:
    version = getattr(info.obj, "api_version", None)
    if version != PLUGIN_API_VERSION:
        info.reason = (f"written for plugin API version {version}, "
                       f"this jaxforge has version {PLUGIN_API_VERSION}")
        warnings.warn(f"Plugin {info.id}: {info.reason}; it may not work.",
                      PluginAPIVersionWarning, stacklevel=3)


def _load_error(info: PluginInfo) -> PluginError:
    return PluginError(
        f"The {info.kind_singular} plugin {info.id!r} failed to load (distribution "
        f"{info.distribution_name} {info.version}, entry point {info.name} = "
        f"{info.entry_point!r}): {info.reason}")


registry = Registry()

