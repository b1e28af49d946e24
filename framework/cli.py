"""The `jaxforge` command. Imports JAX only for commands that need it, so listing is instant.

    jaxforge train --config experiments/digits_cnn.py --workdir runs/x [--config.a.b=v ...]
    jaxforge eval --workdir runs/x
    jaxforge predict --workdir runs/x (--inputs x.npy | --split eval) [-o predictions.npz]
    jaxforge export --workdir runs/x [-o model.jaxexport] [--platforms cpu,cuda,tpu]
    jaxforge doctor [--config PATH]
    jaxforge plot runs/x runs/y [--metric loss ...] [-o curves.png]
    jaxforge sweep --config PATH --workdir DIR --sweep.a.b=v1,v2 [--sweep.c=...] [--config.d=v]
    jaxforge tune --config PATH --workdir DIR --search.a.b=loguniform:1e-4:1e-2 [--trials N ...]
    jaxforge plugins list [--kind KIND] [--json]
    jaxforge plugins show ID [--kind KIND]
    jaxforge plugins check ID [ID ...] [--kind KIND] [--verbose] [--config PATH] [--config.x=v ...]
    jaxforge new-plugin NAME [--dir DIR]
    jaxforge config show --config PATH [--config.a.b=v ...]
    jaxforge weights export --workdir DIR -o model.safetensors [--step N] [--ema]
    jaxforge generate --workdir runs/x --prompt "def " [--max_new_tokens 200] [--temperature 0.8]
                      [--top_k 40] [--seed 0] [--step N]

`train`, `eval` and `doctor` take --coordinator_address, --num_processes and --process_id for a
multi-process run (one process per host); on Cloud TPU VMs, SLURM and Open MPI JAX finds them.

A bad config, an unknown plugin or a wrong flag prints one message and exits with status 2;
`plugins check` exits with status 1 when a plugin fails a conformance check.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Sequence
from typing import Any

from framework.errors import JaxforgeError
from framework.kinds import cli_choices
from framework.registry import PluginError, PluginInfo, close_matches, normalize_id, registry


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


def _joins_other_processes(args: argparse.Namespace) -> bool:
    """Whether `jax.distributed.initialize` has work to do: multi-process flags were given or
    the environment is a cluster JAX detects. Otherwise it does nothing, and need not come
    first."""
    from framework import distributed

    flags = (args.coordinator_address, args.num_processes, args.process_id)
    return any(f is not None for f in flags) or distributed.cluster_environment() is not None


def _parser() -> argparse.ArgumentParser:
    """The `jaxforge` argument parser: one subcommand per function below."""
    parser = argparse.ArgumentParser(
        prog="jaxforge", allow_abbrev=False,
        description="Train JAX models from one config file; plugins come from entry points.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(commands)
    _add_eval_command(commands)
    _add_predict_command(commands)
    _add_generate_command(commands)
    _add_export_command(commands)
    _add_doctor_command(commands)
    _add_plot_command(commands)
    _add_sweep_command(commands)
    _add_tune_command(commands)
    _add_plugins_command(commands)
    _add_new_plugin_command(commands)
    _add_config_command(commands)
    _add_weights_command(commands)
    return parser


def _add_train_command(commands: Any) -> None:
    """`jaxforge train` and its flags."""
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


def _add_eval_command(commands: Any) -> None:
    """`jaxforge eval` and its flags."""
    evaluate = commands.add_parser("eval", allow_abbrev=False,
                                   help="evaluate a workdir's latest checkpoint")
    evaluate.add_argument("--workdir", required=True, metavar="DIR")
    evaluate.add_argument("--step", type=int, default=None,
                          help="checkpoint step (default: latest)")
    _add_distributed_flags(evaluate)


def _add_predict_command(commands: Any) -> None:
    """`jaxforge predict` and its flags."""
    predict = commands.add_parser(
        "predict", allow_abbrev=False, help="a checkpoint's predictions for inputs in a file",
        epilog="Inputs are examples as the dataset yields them: an array of shape "
               "(N, *input_shape) and dtype input_dtype of the run's dataset metadata.")
    predict.add_argument("--workdir", required=True, metavar="DIR")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", metavar="FILE",
                        help="a .npy array of inputs (or a .npz holding one named `inputs`)")
    source.add_argument("--split", choices=["eval"],
                        help="predict the dataset's eval split; adds `label` and prints accuracy")
    predict.add_argument("-o", "--output", default="predictions.npz", metavar="FILE",
                         help="where to write logits, probabilities, top_k and top_k_probabilities"
                              " (default: predictions.npz)")
    predict.add_argument("--top_k", type=int, default=5, metavar="K",
                         help="how many of the most probable classes to write (default: 5)")
    predict.add_argument("--batch_size", type=int, default=None, metavar="N",
                         help="examples per forward pass (default: the run's eval batch size)")
    predict.add_argument("--step", type=int, default=None,
                         help="checkpoint step (default: latest)")


def _add_generate_command(commands: Any) -> None:
    """`jaxforge generate` and its flags."""
    generate = commands.add_parser(
        "generate", allow_abbrev=False, help="text from a language model's checkpoint",
        epilog="The model needs a key/value cache (transformer_lm has one); the run's dataset "
               "gives the tokenizer (bytes when it has none and the vocabulary is 256).")
    generate.add_argument("--workdir", required=True, metavar="DIR")
    generate.add_argument("--prompt", required=True, help="the text to continue")
    generate.add_argument("--max_new_tokens", type=int, default=200, metavar="N",
                          help="tokens to generate (default: 200)")
    generate.add_argument("--temperature", type=float, default=0.8, metavar="T",
                          help="sampling temperature; 0 takes the most probable token "
                               "(default: 0.8)")
    generate.add_argument("--top_k", type=int, default=40, metavar="K",
                          help="sample among the K most probable tokens; 0: all (default: 40)")
    generate.add_argument("--seed", type=int, default=0, help="the sampling seed (default: 0)")
    generate.add_argument("--step", type=int, default=None,
                          help="checkpoint step (default: latest)")


def _add_export_command(commands: Any) -> None:
    """`jaxforge export` and its flags."""
    export = commands.add_parser(
        "export", allow_abbrev=False,
        help="write the eval forward pass as a jax.export file that runs without jaxforge")
    export.add_argument("--workdir", required=True, metavar="DIR")
    export.add_argument("-o", "--output", default="model.jaxexport", metavar="FILE",
                        help="the file to write (default: model.jaxexport)")
    export.add_argument("--platforms", default=None, metavar="P,P",
                        help="comma-separated platforms to compile for, from cpu, cuda, rocm, "
                             "tpu (default: this machine's)")
    export.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: latest)")


def _add_doctor_command(commands: Any) -> None:
    """`jaxforge doctor` and its flags."""
    doctor = commands.add_parser(
        "doctor", allow_abbrev=False,
        help="versions, devices and processes; checks that all processes agree")
    doctor.add_argument("--config", metavar="PATH",
                        help="also show the mesh this experiment would get (overrides allowed)")
    _add_distributed_flags(doctor)


def _add_plot_command(commands: Any) -> None:
    """`jaxforge plot` and its flags."""
    plot = commands.add_parser("plot", allow_abbrev=False,
                               help="learning curves of one or more runs, as a PNG")
    plot.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories to overlay")
    plot.add_argument("--metric", action="append", default=[], metavar="M",
                      help="a metric to plot, e.g. eval/accuracy, or loss for train/loss and "
                           "eval/loss; repeat for more (default: every train/ and eval/ metric)")
    plot.add_argument("-o", "--output", default="curves.png", metavar="FILE",
                      help="image to write; the extension picks the format (default: curves.png)")


def _add_sweep_command(commands: Any) -> None:
    """`jaxforge sweep` and its flags."""
    sweep = commands.add_parser(
        "sweep", allow_abbrev=False, help="train every combination of some config values",
        epilog="Sweep a field with --sweep.SECTION.FIELD=V1,V2,...; the cartesian product of all "
               "--sweep flags runs one after another in DIR/<name>. Fixed overrides: "
               "--config.SECTION.FIELD=VALUE. Finished runs are skipped when run again.")
    sweep.add_argument("--config", required=True, metavar="PATH",
                       help="experiment file defining get_config() (PATH or PATH.py:ARG)")
    sweep.add_argument("--workdir", required=True, metavar="DIR",
                       help="holds one workdir per run, sweep.csv and sweep.png")


def _add_tune_command(commands: Any) -> None:
    """`jaxforge tune` and its flags (docs/tuning.md)."""
    tune = commands.add_parser(
        "tune", allow_abbrev=False, help="search hyperparameters with Optuna, pruning bad trials",
        epilog="Search a field with --search.SECTION.FIELD=RANGE: uniform:LOW:HIGH, "
               "loguniform:LOW:HIGH, int:LOW:HIGH[:log] or choice:A,B,...; fixed overrides: "
               "--config.SECTION.FIELD=VALUE. Each trial trains in DIR/trial-<n>. The same "
               "command on several machines (one --storage) adds workers to one study; run "
               "again, it continues the study. Needs Optuna: pip install -e \".[tune]\".")
    tune.add_argument("--config", metavar="PATH",
                      help="experiment file defining get_config() (not with --report)")
    tune.add_argument("--workdir", required=True, metavar="DIR",
                      help="holds one workdir per trial, study.db, trials.csv, best_config.py "
                           "and the plots")
    tune.add_argument("--trials", type=int, default=20, metavar="N",
                      help="trials in the study, all workers together (default: 20)")
    tune.add_argument("--metric", default=None, metavar="NAME",
                      help="the eval metric to optimise (default: the config's "
                           "train.best_metric)")
    tune.add_argument("--mode", choices=("max", "min"), default=None,
                      help="maximise or minimise --metric (default: train.best_mode)")
    tune.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe",
                      help="Optuna's sampler (default: tpe; grid lists int and choice ranges)")
    tune.add_argument("--pruner", choices=("median", "asha", "none"), default="median",
                      help="stops trials that evaluate worse than others did at that step "
                           "(default: median)")
    tune.add_argument("--pruner_startup_trials", type=int, default=5, metavar="N",
                      help="trials the median pruner lets finish before it prunes (default: 5)")
    tune.add_argument("--seed", type=int, default=0,
                      help="the sampler's seed: one worker's study repeats (default: 0)")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="Optuna database URL shared by the workers, e.g. "
                           "postgresql://USER@HOST/DB (default: sqlite:///DIR/study.db)")
    tune.add_argument("--study", default=None, metavar="NAME",
                      help="the study's name in the storage (default: DIR's folder name)")
    tune.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                      help="a running trial's heartbeat interval; a trial silent for 4 of "
                           "them is taken as interrupted and retried (default: 30)")
    tune.add_argument("--report", action="store_true",
                      help="only write trials.csv, best_config.py and the plots of DIR's study")


def _add_plugins_command(commands: Any) -> None:
    """`jaxforge plugins` and its flags."""
    plugins = commands.add_parser("plugins", help="list and inspect plugins")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", required=True,
                                             metavar="COMMAND")
    listing = plugin_commands.add_parser("list", help="every installed plugin (imports none)")
    listing.add_argument("--kind", choices=cli_choices())
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = plugin_commands.add_parser("show", help="one plugin: where it comes from, its fields")
    show.add_argument("id", help="a name or a distribution:name id")
    show.add_argument("--kind", choices=cli_choices())

    check = plugin_commands.add_parser(
        "check", allow_abbrev=False, help="run the conformance checks on installed plugins",
        epilog="Exit status: 0 when every check passes, 1 when one fails, 2 for an unknown id.")
    check.add_argument("ids", nargs="+", metavar="ID",
                       help="a name, a distribution:name id, or distribution:* (all its plugins)")
    check.add_argument("--kind", choices=cli_choices())
    check.add_argument("--config", metavar="PATH", default=None,
                       help="the experiment to check the plugins in (default: a tiny one on "
                            "synthetic data); --config.SECTION.FIELD=VALUE overrides it")
    check.add_argument("--verbose", action="store_true",
                       help="print each failure's whole traceback (by default only the "
                            "innermost frames in the plugin's own code)")


def _add_new_plugin_command(commands: Any) -> None:
    """`jaxforge new-plugin` and its flags."""
    new_plugin = commands.add_parser("new-plugin", allow_abbrev=False,
                                     help="create a plugin package from the template")
    new_plugin.add_argument("name", metavar="NAME", help="the distribution name, e.g. acme-vision")
    new_plugin.add_argument("--dir", default=".", metavar="DIR",
                            help="where to create the NAME folder (default: here)")


def _add_config_command(commands: Any) -> None:
    """`jaxforge config` and its flags."""
    config = commands.add_parser("config", help="resolve and validate configs")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            metavar="COMMAND")
    config_show = config_commands.add_parser(
        "show", allow_abbrev=False,
        help="print the resolved, validated config (train.num_steps counted from num_epochs)")
    config_show.add_argument("--config", required=True, metavar="PATH")


def _add_weights_command(commands: Any) -> None:
    """`jaxforge weights` and its flags."""
    weights = commands.add_parser("weights", help="weights files (safetensors) of a run")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True,
                                              metavar="COMMAND")
    weights_export = weights_commands.add_parser(
        "export", allow_abbrev=False,
        help="write a checkpoint's parameters and batch statistics to a .safetensors file")
    weights_export.add_argument("--workdir", required=True, metavar="DIR",
                                help="a workdir, or one of its checkpoints (DIR/checkpoints/N)")
    weights_export.add_argument("-o", "--output", required=True, metavar="FILE",
                                help="the weights file to write (NAME.safetensors)")
    weights_export.add_argument("--step", type=int, default=None, metavar="N",
                                help="the checkpoint step (default: the latest)")
    weights_export.add_argument("--ema", action="store_true",
                                help="the EMA parameters instead of the trained ones")


def _plugins_list(kind: str | None, as_json: bool) -> None:
    infos = registry.infos(kind)
    if as_json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [("ID", "KIND", "DISTRIBUTION", "VERSION", "STATUS")]
    rows += [(i.id, i.kind_singular, i.distribution_name, i.version or "-",
              i.status + (f" ({i.reason})" if i.reason else "")) for i in infos]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])


def _plugins_show(name: str, kind: str | None) -> None:
    info = registry.find(name, kind)
    plugin = registry.load(info.kind, info.id)
    print(f"id:           {info.id}\nkind:         {info.kind_singular}\n"
          f"distribution: {info.distribution_name} {info.version}\n"
          f"entry point:  {info.entry_point}\nstatus:       {info.status}"
          + (f" ({info.reason})" if info.reason else ""))
    description = getattr(plugin, "description", "") or (plugin.__doc__ or "").strip()
    if description:
        print(f"description:  {description}")
    from framework.config import field_docs, format_config

    defaults = plugin.default_config()
    meanings = field_docs(defaults)
    lines = format_config(defaults).splitlines() or ["{}"]
    width = max(len(line) for line in lines)
    print("default config:")
    for line in lines:
        meaning = meanings.get(line.split(" = ", 1)[0])
        print(f"  {line.ljust(width)}  # {meaning}" if meaning else f"  {line}")


def _plugins_to_check(ids: Sequence[str], kind: str | None) -> list[PluginInfo]:
    infos = []
    for name in ids:
        if "*" not in name:
            infos.append(registry.find(name, kind))
            continue
        usable = [i for i in registry.infos(kind) if i.status != "disabled"]
        matched = [i for i in usable if fnmatch.fnmatch(i.id, normalize_id(name))]
        if not matched:
            distribution, _, rest = normalize_id(name).rpartition(":")
            close = [f"{d}:{rest}" for d in close_matches(
                distribution, {i.distribution for i in usable})] if distribution else []
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise PluginError(f"No installed plugin matches {name!r}.{hint} `jaxforge plugins "
                              "list` shows them all.")
        infos += matched
    return list({info.id: info for info in infos}.values())


def _plugins_check(ids: Sequence[str], kind: str | None, config_path: str | None,
                   overrides: Sequence[str], verbose: bool = False) -> int:
    """Print a pass/fail table per plugin; 0 when all pass, 1 when a check fails."""
    from framework import config as config_lib
    from framework import testing

    infos = _plugins_to_check(ids, kind)
    config_lib.parse_override_keys(overrides)  # Malformed overrides fail before any check.
    experiment = config_lib.load_experiment(config_path) if config_path else None
    print(f"Conformance checks (plugin API version {testing.PLUGIN_API_VERSION}), each plugin "
          f"in the experiment {config_path or 'framework.testing.tiny_config()'}"
          + (f" with {' '.join(overrides)}" if overrides else "") + ".")
    failed = []
    for info in infos:
        print(f"\n{info.id} ({info.kind_singular}, {info.distribution_name} {info.version or '-'}, "
              f"entry point {info.entry_point})")
        results = testing.run_checks(info.kind, info.id, experiment, overrides)
        width = max(len(r.check) for r in results)
        print(f"  {'CHECK'.ljust(width)}  RESULT  TIME")
        for result in results:
            print(f"  {result.check.ljust(width)}  {result.status.upper():6}  "
                  f"{result.seconds:4.1f}s")
            for line in result.message.splitlines() if result.status != "pass" else []:
                print(f"      {line}")
            for line in result.traceback.splitlines() if verbose else []:
                print(f"      {line}")
        if not all(r.passed for r in results):
            failed.append(info.id)
    passed = len(infos) - len(failed)
    print(f"\n{len(infos)} plugin(s) checked: {passed} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})." if failed else "."))
    return 1 if failed else 0


def _plugins(args: argparse.Namespace, extra: list[str]) -> int:
    if args.plugins_command == "check":
        return _plugins_check(args.ids, args.kind, args.config, extra, args.verbose)
    if args.plugins_command == "list":
        _plugins_list(args.kind, args.json)
    else:
        _plugins_show(args.id, args.kind)
    return 0


def _new_plugin(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import scaffold

    target = scaffold.new_plugin(args.name, args.dir)
    print(scaffold.next_steps(target, args.name))
    return 0


def _config_show(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import config as config_lib

    print(config_lib.format_resolved(config_lib.load_config(args.config, extra)))
    return 0


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import config as config_lib

    if _joins_other_processes(args):  # Before get_config(), which may ask for devices.
        _initialize_distributed(args)
    # A wrong framework key, type or plugin name fails before any plugin's module, and so
    # JAX, is imported (docs/performance.md, "Memory and start-up").
    config = config_lib.load_config(args.config, extra)
    from framework import loop

    loop.train(config, args.workdir, allow_config_change=args.allow_config_change,
               restore_step=args.restore_step)
    return 0


def _eval(args: argparse.Namespace, extra: list[str]) -> int:
    _initialize_distributed(args)
    from framework import loop

    metrics = loop.evaluate(args.workdir, args.step)
    if loop.is_main_process():
        print(json.dumps(metrics, indent=2))
    return 0


def _read_inputs(path: str) -> Any:
    import numpy as np

    try:
        with open(path, "rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                if "inputs" not in loaded.files:
                    raise JaxforgeError(f"{path} holds {loaded.files}; predict reads the array "
                                        "named `inputs`.")
                loaded = loaded["inputs"]
            return loaded
    except (OSError, ValueError) as error:
        raise JaxforgeError(f"Cannot read inputs from {path}: {error}") from None


def _predict(args: argparse.Namespace, extra: list[str]) -> int:
    import numpy as np

    from framework import predict

    if args.top_k < 1:
        raise JaxforgeError(f"--top_k={args.top_k}: give a positive number of classes.")
    if args.batch_size is not None and args.batch_size < 1:
        raise JaxforgeError(f"--batch_size={args.batch_size}: give a positive batch size.")
    inputs = _read_inputs(args.inputs) if args.inputs else None  # A bad file fails first.
    loaded = predict.load(args.workdir, args.step)
    labels = None
    if inputs is None:
        inputs, labels = loaded.eval_split()
    logits = loaded.predict(inputs, args.batch_size)
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        raise JaxforgeError("predict writes class scores of shape (N, classes); this model's "
                            f"outputs are {_shapes(logits)}. Use framework.load in Python.")
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    k = min(args.top_k, logits.shape[-1])
    top_k = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k].astype(np.int32)
    outputs = {"logits": logits, "probabilities": probabilities, "top_k": top_k,
               "top_k_probabilities": np.take_along_axis(probabilities, top_k, axis=-1)}
    if labels is not None:
        outputs["label"] = labels
    np.savez(args.output, **outputs)
    print(f"Wrote {args.output}: {', '.join(outputs)} for {len(logits)} example(s), "
          f"step-{loaded.step} checkpoint of {args.workdir}"
          + (" (EMA parameters)." if loaded.uses_ema else "."))
    if labels is not None:
        print(f"accuracy {float(np.mean(top_k[:, 0] == labels)):.4f} on the eval split")
    return 0


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import generate

    if args.temperature < 0 or args.top_k < 0:
        raise JaxforgeError(f"--temperature={args.temperature} and --top_k={args.top_k} must "
                            "not be negative.")
    print(args.prompt + generate.generate(args.workdir, args.prompt, args.max_new_tokens,
                                          args.temperature, args.top_k, args.seed, args.step))
    return 0


def _shapes(tree: Any) -> str:
    import jax

    return str(jax.tree.map(lambda x: getattr(x, "shape", type(x).__name__), tree))


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import export, predict

    platforms = [p.strip() for p in args.platforms.split(",")] if args.platforms else None
    export.check_platforms(platforms)
    loaded = predict.load(args.workdir, args.step)
    exported = export.write_export(loaded, args.output, platforms)
    print(f"Wrote {args.output}: the step-{loaded.step} checkpoint of {args.workdir} for "
          f"{', '.join(exported.platforms)}; inputs {exported.in_avals[0].str_short()}, "
          f"outputs {exported.out_avals[0].str_short()}.")
    return 0


def _doctor(args: argparse.Namespace, extra: list[str]) -> int:
    _initialize_distributed(args)
    import jax

    from framework import doctor

    text = doctor.report(args.config, extra)
    if jax.process_index() == 0:
        print(text)
    return 0


def _plot(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import plot

    figure = plot.plot_workdirs(args.workdirs, args.output, args.metric)
    panels = sum(ax.get_visible() for ax in figure.axes)
    print(f"Wrote {args.output}: {panels} panel(s), {len(args.workdirs)} run(s).")
    return 0


def _sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import sweep

    axes, overrides = sweep.split_sweep_args(extra)
    sweep.run_sweep(args.config, args.workdir, axes, overrides)
    return 0


def _tune(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import tune

    if args.report:
        if args.config or extra:
            raise JaxforgeError("--report reads the study in --workdir: give no --config, "
                                "--search. or --config. flags with it.")
        tune.report(args.workdir, args.storage, args.study)
        return 0
    if not args.config:
        raise JaxforgeError("jaxforge tune needs --config PATH (or --report).")
    from framework import search_space

    specs, overrides = search_space.split_search_args(extra)
    options = tune.Options(args.trials, args.metric, args.mode, args.sampler, args.pruner,
                           args.pruner_startup_trials, args.seed, args.storage, args.study,
                           args.heartbeat)
    tune.run_tune(args.config, args.workdir, specs, overrides, options)
    return 0


def _weights(args: argparse.Namespace, extra: list[str]) -> int:
    from framework import weights

    path, step, count = weights.export(args.workdir, args.output, args.step, args.ema)
    print(f"Wrote {path}: {count} arrays of the step-{step} checkpoint"
          + (" (EMA parameters)" if args.ema else "") + ".")
    return 0


_COMMANDS = {"plugins": _plugins, "new-plugin": _new_plugin, "config": _config_show,
             "train": _train, "eval": _eval, "doctor": _doctor, "plot": _plot, "sweep": _sweep,
             "tune": _tune, "predict": _predict, "export": _export, "weights": _weights,
             "generate": _generate}
"""Each command's function: `(args, the --config./--sweep. arguments) -> exit status`."""


def _takes_overrides(args: argparse.Namespace) -> bool:
    return (args.command in ("train", "sweep", "tune")
            or (args.command == "doctor" and args.config is not None)
            or getattr(args, "config_command", None) == "show"
            or getattr(args, "plugins_command", None) == "check")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `jaxforge` command; a JaxforgeError is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = _parser().parse_known_args(argv)
    if extra and not _takes_overrides(args):
        _parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _COMMANDS[args.command](args, extra)
    except JaxforgeError as error:
        print(f"jaxforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxforge: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
