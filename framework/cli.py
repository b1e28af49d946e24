"""The `jaxforge` command. Imports JAX only for commands that need it, so listing is instant.

    jaxforge train --config experiments/digits_cnn.py --workdir runs/x [--config.a.b=v ...]
    jaxforge eval --workdir runs/x
    jaxforge doctor [--config PATH]
    jaxforge plot runs/x runs/y [--metric loss ...] [-o curves.png]
    jaxforge sweep --config PATH --workdir DIR --sweep.a.b=v1,v2 [--sweep.c=...] [--config.d=v]
    jaxforge plugins list [--kind KIND] [--json]
    jaxforge plugins show ID [--kind KIND]
    jaxforge config show --config PATH [--config.a.b=v ...]

`train`, `eval` and `doctor` take --coordinator_address, --num_processes and --process_id for a
multi-process run (one process per host); on Cloud TPU VMs, SLURM and Open MPI JAX finds them.

A bad config, an unknown plugin or a wrong flag prints one message and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from framework.errors import JaxforgeError
from framework.registry import KINDS, PluginError, registry


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process", "one process per host, all started with the same flags but "
        "--process_id; omit on Cloud TPU VMs, SLURM and Open MPI, where JAX detects them")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="address of process 0, reachable from every process")
    group.add_argument("--num_processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process_id", type=int, metavar="I", help="this process, 0..N-1")


def _initialize_distributed(args: argparse.Namespace) -> None:
    """Join the other processes before the command touches any device."""
    from framework import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxforge", allow_abbrev=False,
        description="Train JAX models from one config file; plugins come from entry points.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", allow_abbrev=False, help="train (or resume) an experiment",
        epilog="Override any config field with --config.SECTION.FIELD=VALUE.")
    train.add_argument("--config", required=True, metavar="PATH",
                       help="experiment file defining get_config() (PATH or PATH.py:ARG)")
    train.add_argument("--workdir", required=True, metavar="DIR",
                       help="where config, metrics, checkpoints and summary go; resumed if present")
    train.add_argument("--allow_config_change", action="store_true",
                       help="resume a workdir whose config.json differs from this config")
    train.add_argument("--restore_step", type=int, default=None, metavar="N",
                       help="resume from this checkpoint instead of the latest")
    _add_distributed_flags(train)

    evaluate = commands.add_parser("eval", allow_abbrev=False,
                                   help="evaluate a workdir's latest checkpoint")
    evaluate.add_argument("--workdir", required=True, metavar="DIR")
    evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    _add_distributed_flags(evaluate)

    doctor = commands.add_parser(
        "doctor", allow_abbrev=False,
        help="versions, devices and processes; checks that all processes agree")
    doctor.add_argument("--config", metavar="PATH",
                        help="also show the mesh this experiment would get (overrides allowed)")
    _add_distributed_flags(doctor)

    plot = commands.add_parser("plot", allow_abbrev=False,
                               help="learning curves of one or more runs, as a PNG")
    plot.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories to overlay")
    plot.add_argument("--metric", action="append", default=[], metavar="M",
                      help="a metric to plot, e.g. eval/accuracy, or loss for train/loss and "
                           "eval/loss; repeat for more (default: every train/ and eval/ metric)")
    plot.add_argument("-o", "--output", default="curves.png", metavar="FILE",
                      help="image to write; the extension picks the format (default: curves.png)")

    sweep = commands.add_parser(
        "sweep", allow_abbrev=False, help="train every combination of some config values",
        epilog="Sweep a field with --sweep.SECTION.FIELD=V1,V2,...; the cartesian product of all "
               "--sweep flags runs one after another in DIR/<name>. Fixed overrides: "
               "--config.SECTION.FIELD=VALUE. Finished runs are skipped when run again.")
    sweep.add_argument("--config", required=True, metavar="PATH",
                       help="experiment file defining get_config() (PATH or PATH.py:ARG)")
    sweep.add_argument("--workdir", required=True, metavar="DIR",
                       help="holds one workdir per run, sweep.csv and sweep.png")

    plugins = commands.add_parser("plugins", help="list and inspect plugins")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", required=True,
                                             metavar="COMMAND")
    listing = plugin_commands.add_parser("list", help="every installed plugin (imports none)")
    listing.add_argument("--kind", choices=[*KINDS, *(k[:-1] for k in KINDS)])
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = plugin_commands.add_parser("show", help="one plugin: where it comes from, its fields")
    show.add_argument("id", help="a name or a distribution:name id")
    show.add_argument("--kind", choices=[*KINDS, *(k[:-1] for k in KINDS)])

    config = commands.add_parser("config", help="resolve and validate configs")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            metavar="COMMAND")
    config_show = config_commands.add_parser(
        "show", allow_abbrev=False, help="print the resolved, validated config")
    config_show.add_argument("--config", required=True, metavar="PATH")
    return parser


def _plugins_list(kind: str | None, as_json: bool) -> None:
    infos = registry.infos(kind)
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [("ID", "KIND", "VERSION", "STATUS")]
    rows += [(i.id, i.kind[:-1], i.version or "-",
              i.status + (f" ({i.reason})" if i.reason else "")) for i in infos]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


def _plugins_show(name: str, kind: str | None) -> None:
    kinds = [kind if kind.endswith("s") else kind + "s"] if kind else list(KINDS)
    found, errors = [], []
    for k in kinds:
        try:
            found.append(registry.resolve(k, name))
        except PluginError as error:
            errors.append(error)
    if not found:
        raise errors[0] if len(errors) == 1 else PluginError(
            f"No plugin named {name!r} of any kind. `jaxforge plugins list` shows them all.")
    if len(found) > 1:
        raise PluginError(f"{name!r} names plugins of several kinds "
                          f"({', '.join(i.kind for i in found)}); add --kind.")
    info = found[0]
    plugin = registry.load(info.kind, name)
    print(f"id:           {info.id}\nkind:         {info.kind[:-1]}\n"
          f"distribution: {info.distribution} {info.version}\n"
          f"entry point:  {info.entry_point}\nstatus:       {info.status}"
          + (f" ({info.reason})" if info.reason else ""))
    description = getattr(plugin, "description", "") or (plugin.__doc__ or "").strip()
    if description:
        print(f"description:  {description}")
    from framework.config import format_config

    print("default config:")
    for line in format_config(plugin.default_config()).splitlines() or ["{}"]:
        print("  " + line)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = _parser().parse_known_args(argv)
    takes_overrides = (args.command in ("train", "sweep")
                       or (args.command == "doctor" and args.config is not None)
                       or getattr(args, "config_command", None) == "show")
    if extra and not takes_overrides:
        _parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "plugins":
            if args.plugins_command == "list":
                _plugins_list(args.kind, args.json)
            else:
                _plugins_show(args.id, args.kind)
        elif args.command == "config":
            from framework import config as config_lib

            print(config_lib.format_config(config_lib.load_and_resolve(args.config, extra)))
        elif args.command == "train":
            _initialize_distributed(args)
            from framework import config as config_lib

            config = config_lib.load_and_resolve(args.config, extra)
            from framework import loop

            loop.train(config, args.workdir, allow_config_change=args.allow_config_change,
                       restore_step=args.restore_step)
        elif args.command == "eval":
            _initialize_distributed(args)
            from framework import loop

            metrics = loop.evaluate(args.workdir, args.step)
            if loop.is_main_process():
                print(json.dumps(metrics, indent=2))
        elif args.command == "doctor":
            _initialize_distributed(args)
            import jax

            from framework import doctor

            text = doctor.report(args.config, extra)
            if jax.process_index() == 0:
                print(text)
        elif args.command == "plot":
            from framework import plot

            figure = plot.plot_workdirs(args.workdirs, args.output, args.metric)
            panels = sum(ax.get_visible() for ax in figure.axes)
            print(f"Wrote {args.output}: {panels} panel(s), {len(args.workdirs)} run(s).")
        elif args.command == "sweep":
            from framework import sweep

            axes, overrides = sweep.split_sweep_args(extra)
            sweep.run_sweep(args.config, args.workdir, axes, overrides)
    except JaxforgeError as error:
        print(f"jaxforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxforge: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
