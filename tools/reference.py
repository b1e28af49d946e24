"""Write the generated reference pages from the code, so that they cannot go stale.

    python tools/reference.py          # rewrite docs/reference/config.md and docs/reference/cli.md
    python tools/reference.py --check  # exit 1, naming each stale file, when they differ

`config.md`: every field of `framework.config.base_config()`, section by section, and every
built-in plugin's fields (the entry points of the installed `jaxforge` distribution), grouped by
kind: field, type, default and meaning (from `framework.fields`). `cli.md`: every command and
subcommand of `framework.cli._parser()` with every flag, its help text and epilog.
`plugin-kinds.md`: the table of plugin kinds (`framework.kinds`) with each kind's conformance
checks (`framework.testing`).
`tests/test_reference.py` fails when the committed pages differ from what this script writes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # Document this checkout's code, whatever is installed.
    sys.path.insert(0, str(ROOT))

import ml_collections  # noqa: E402
from ml_collections.config_dict import FieldReference  # noqa: E402

from framework import cli, config, kinds, scaffold, testing  # noqa: E402
from framework.registry import BUILTIN_DISTRIBUTION  # noqa: E402

REGENERATE = "python tools/reference.py"


def _cell(text: str) -> str:
    """One line of table-cell text: a pipe would end the cell, a newline the row."""
    return " ".join(text.split()).replace("|", "\\|")


def _text(text: str) -> str:
    """Prose as written in the code, rendered literally: `<name>` is no HTML tag, `*` no
    emphasis. Code spans written in it (`name`) stay code."""
    parts = _cell(text).split("`")  # Even parts are prose, odd ones code spans.
    parts[::2] = [part.replace("*", "\\*").replace("<", "&lt;") for part in parts[::2]]
    return "`".join(parts)


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _header(title: str, source: str) -> list[str]:
    return [f"# {title}", "",
            f"Generated from {source} by `{REGENERATE}`; do not edit by hand: change the code "
            f"and run `{REGENERATE}` again (`tests/test_reference.py` checks it is current).", ""]


# config.md -------------------------------------------------------------------------------------


def _field_rows(section: ml_collections.ConfigDict, prefix: str, meanings: dict[str, str],
                at: str = "", nested: bool = True) -> list[tuple[str, ...]]:
    """One row per field, in the order the fields were written; nested sections flattened,
    or left out when not `nested`."""
    rows = []
    for name, value in section._fields.items():
        if isinstance(value, FieldReference):
            kind, value = value.get_type().__name__, value.get()
            kind += " or None" if value is None else ""
        else:
            kind = type(value).__name__
        if isinstance(value, ml_collections.ConfigDict):
            rows += _field_rows(value, prefix, meanings, f"{at}{name}.") if nested else []
            continue
        rows.append((_code(prefix + at + name), kind, _code(repr(value)),
                     _text(meanings.get(at + name, ""))))
    return rows


FIELD_HEADER = ("field", "type", "default", "meaning")


def builtin_plugins() -> dict[kinds.Kind, list[tuple[str, Any]]]:
    """kind -> [(name, plugin)] of every plugin the jaxforge distribution declares, by name."""
    entry_points = importlib.metadata.distribution(BUILTIN_DISTRIBUTION).entry_points
    return {kind: [(ep.name, ep.load()) for ep in sorted(entry_points, key=lambda e: e.name)
                   if ep.group == kind.group] for kind in kinds.KINDS}


def config_reference() -> str:
    base = config.base_config()
    meanings = config.field_docs(base)
    lines = _header("Config reference", "`framework.config.base_config()` and the built-in "
                    "plugins' `default_config()`")
    lines += [
        "An experiment's `get_config()` sets any of these fields; `--config.SECTION.FIELD=VALUE` "
        "overrides one on the command line. Each plugin section also holds the fields of the "
        "plugin it names (below). A type `int or None` is optional: `None` means the default "
        "described.", "",
        "## Core fields", ""]
    top = _field_rows(base, "", meanings, nested=False)
    if top:
        lines += ["### Top level", "", *_table(FIELD_HEADER, top), ""]
    for name, value in base._fields.items():
        if not isinstance(value, ml_collections.ConfigDict):
            continue
        lines += [f"### `{name}`", "", _text(meanings.get(name, "")), ""]
        section_meanings = {path[len(name) + 1:]: text for path, text in meanings.items()
                            if path.startswith(name + ".")}
        rows = _field_rows(value, name + ".", section_meanings)
        if rows:
            lines += [*_table(FIELD_HEADER, rows), ""]
        kind = next((k for k in kinds.KINDS if k.section == name), None)
        if kind:
            lines += [f"The {kind.singular} plugins' own fields: [{kind.name}](#{kind.name}).",
                      ""]
    lines += ["## Built-in plugins", "",
              "Each is `jaxforge:NAME`; a config names it by `NAME` when no other installed "
              "package provides that name.", ""]
    for kind, plugins in builtin_plugins().items():
        section, mapped = kind.section, kind.mapping
        lines += [f"### {kind.name.capitalize()}", ""]
        if mapped:
            lines += [f"Named as keys of `{section}`, e.g. `{section}.NAME.FIELD`; several may be "
                      "given.", ""]
        else:
            lines += [f"Chosen by `{section}.name`; its fields are `{section}.FIELD`.", ""]
        for name, plugin in plugins:
            defaults = plugin.default_config()
            prefix = f"{section}.{name}." if mapped else f"{section}."
            lines += [f"#### `{name}`", ""]
            description = getattr(plugin, "description", "")
            if description:
                lines += [_text(description), ""]
            rows = _field_rows(defaults, prefix, config.field_docs(defaults))
            lines += [*_table(FIELD_HEADER, rows), ""] if rows else ["No fields.", ""]
    return "\n".join(lines).rstrip() + "\n"


# cli.md ----------------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...], help_text: str | None
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every command, parent first, each with the help its parent lists it with."""
    yield path, parser, help_text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield from _commands(subparser, (*path, name), helps.get(name))


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        name = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        name = action.metavar or (action.dest if not action.option_strings
                                  else action.dest.upper())
    return {None: name, "?": f"[{name}]", "*": f"[{name} ...]",
            "+": f"{name} [{name} ...]"}.get(action.nargs, name)


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as argparse prints it (`%(default)s` and the like filled in)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return action.help % params if "%" in action.help else action.help


def _default(action: argparse.Action) -> str:
    if action.required or not action.option_strings:
        return "required"
    if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
        return ""
    return _code(str(action.default))


def _documented(action: argparse.Action) -> bool:
    return not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))


def _synopsis(parser: argparse.ArgumentParser) -> str:
    words = [parser.prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words.append(action.metavar or "COMMAND")
        elif _documented(action):
            flag = " ".join(filter(None, [action.option_strings[0] if action.option_strings
                                          else "", _metavar(action)]))
            words.append(flag if action.required or not action.option_strings else f"[{flag}]")
    return " ".join(words)


def cli_reference() -> str:
    parser = cli._parser()
    lines = [*_header("Command line reference", "`framework.cli._parser()`"),
             "Every command also takes `-h` / `--help`.", ""]
    for path, command, help_text in _commands(parser, (parser.prog,), None):
        lines += [f"{'#' * max(2, len(path))} `{' '.join(path)}`", ""]
        if help_text:
            lines += [_text(help_text[0].upper() + help_text[1:]) + ".", ""]
        if command.description and command.description != help_text:
            lines += [_text(command.description), ""]
        lines += ["```text", _synopsis(command), "```", ""]
        subcommands = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subcommands:
            rows = [(_code(f"{' '.join(path)} {choice.dest}"), _text(choice.help or ""))
                    for choice in action._choices_actions]
            lines += [*_table(("command", "help"), rows), ""]
        # Positionals and options in one table; argument groups of their own after it.
        default_groups = (command._positionals, command._optionals)
        groups = [(None, [a for g in default_groups for a in g._group_actions])]
        groups += [(g, g._group_actions) for g in command._action_groups
                   if g not in default_groups]
        for group, actions in groups:
            actions = [a for a in actions if _documented(a)]
            if not actions:
                continue
            if group is not None:
                lines += [f"**{_text(group.title)}**" + (f": {_text(group.description)}."
                                                         if group.description else ""), ""]
            rows = [(_code(", ".join(a.option_strings) or _metavar(a)),
                     _code(_metavar(a) if a.option_strings else ""), _default(a),
                     _text(_help(a, command.prog))) for a in actions]
            lines += [*_table(("argument", "value", "default", "help"), rows), ""]
        if command.epilog:
            lines += [_text(command.epilog), ""]
        if path[1:] == ("new-plugin",):
            lines += ["It prints what comes next; for `jaxforge new-plugin acme-vision --dir ..`:",
                      "", "```text", scaffold.next_steps("../acme-vision", "acme-vision"), "```",
                      ""]
    return "\n".join(lines).rstrip() + "\n"


# plugin-kinds.md -------------------------------------------------------------------------------


def kinds_reference() -> str:
    lines = _header("Plugin kinds", "`framework.kinds` and `framework.testing`")
    lines += ["What a plugin of each kind is declared as, configured in, built with, and checked "
              "for. How to write one: [plugins.md](../plugins.md).", ""]
    rows = []
    for kind in kinds.KINDS:
        section = f"`{kind.section}.NAME.FIELD`" if kind.mapping else f"`{kind.section}.name`"
        builds = "<br>".join(f"`build{_cell(params)}` → {_text(returns)}"
                             for params, returns in kind.builds)
        rows.append((f"`{kind.name}`", _code(kind.group), section, builds,
                     _code(f"framework.{kind.decorator}")))
    lines += [*_table(("kind", "entry-point group", "config", "build", "in-process"), rows), ""]
    lines += ["## Conformance checks", "",
              "`jaxforge plugins check ID` and `framework.testing.check_plugin` run these, in "
              "this order, on a plugin of each kind.", ""]
    for kind in kinds.KINDS:
        rows = [(_code(check.name), _text(check.wants)) for check in testing.checks_for(kind.name)]
        lines += [f"### `{kind.name}`", "", *_table(("check", "the contract"), rows), ""]
    return "\n".join(lines).rstrip() + "\n"


# Writing and checking --------------------------------------------------------------------------

PAGES: dict[str, Callable[[], str]] = {
    "docs/reference/config.md": config_reference,
    "docs/reference/cli.md": cli_reference,
    "docs/reference/plugin-kinds.md": kinds_reference,
}


def stale(root: Path = ROOT) -> list[str]:
    """The pages under `root` whose text differs from what this script writes now."""
    found = []
    for name, render in PAGES.items():
        path = root / name
        if not path.is_file() or path.read_text() != render():
            found.append(name)
    return found


def write(root: Path = ROOT) -> list[str]:
    for name, render in PAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
    return list(PAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each page that is not current")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(ROOT)
        for name in outdated:
            print(f"{name} is stale: run `{REGENERATE}` and commit the result.", file=sys.stderr)
        return 1 if outdated else 0
    for name in write(ROOT):
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
