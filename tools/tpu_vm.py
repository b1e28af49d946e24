"""Run jaxforge on a Cloud TPU VM (one host or a pod slice) with the `gcloud` CLI.

    python tools/tpu_vm.py create  --name NAME --zone ZONE [--accelerator_type TYPE] [--spot]
    python tools/tpu_vm.py install --name NAME --zone ZONE     # this checkout, on every worker
    python tools/tpu_vm.py doctor  --name NAME --zone ZONE     # do all workers agree?
    python tools/tpu_vm.py train   --name NAME --zone ZONE --config experiments/x.py \
        --workdir DIR [--config.a.b=v ...]
    python tools/tpu_vm.py delete  --name NAME --zone ZONE
    python tools/tpu_vm.py run     --name NAME --zone ZONE --spot --config experiments/x.py \
        --workdir gs://BUCKET/RUN [--max_attempts 10] [--config.a.b=v ...]

`run` is create + install + train until the run's summary.json says it finished: when the TPU VM
was preempted (its state PREEMPTED, or it is gone), it deletes it if needed, creates it again,
reinstalls and runs the same train command, which resumes from the checkpoint in the bucket.

Every command runs on all workers at once (`--worker=all`): JAX's multi-controller model wants
one process per host, and on a TPU VM `jax.distributed.initialize()` finds the others itself.
Commands run from the checkout's root (the archive is written there); `--dry-run` prints them
instead of running them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = "jaxforge.tar.gz"
REMOTE_DIR = "jaxforge"
PREEMPTED = "PREEMPTED"  # A TPU VM's state after a preemption, until it is deleted.


def _target(args: argparse.Namespace) -> list[str]:
    target = [args.name, f"--zone={args.zone}"]
    return target + ([f"--project={args.project}"] if args.project else [])


def _on_all_workers(args: argparse.Namespace, remote: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *_target(args), "--worker=all",
            "--command", remote]


def _create(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "create", *_target(args),
            f"--accelerator-type={args.accelerator_type}", f"--version={args.version}",
            *(["--spot"] if args.spot else [])]


def _install(args: argparse.Namespace) -> list[list[str]]:
    return [
        ["git", "archive", "--format=tar.gz", f"--prefix={REMOTE_DIR}/",
         f"--output={ARCHIVE}", "HEAD"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}",
         f"--zone={args.zone}", *([f"--project={args.project}"] if args.project else []),
         "--worker=all"],
        _on_all_workers(args, f"rm -rf {REMOTE_DIR} && tar xzf {ARCHIVE} && "
                              f'python3 -m pip install -e "./{REMOTE_DIR}[tpu,gcs]"'),
    ]


def _train(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
    train = ["python3", "-m", "framework.cli", "train", f"--config={args.config}",
             f"--workdir={args.workdir}", *overrides]
    return _on_all_workers(args, f"cd {REMOTE_DIR} && {shlex.join(train)}")


def _delete(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", *_target(args), "--quiet"]


def commands(args: argparse.Namespace, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The commands one action runs, in order (each a list of arguments, not shell text); for
    `run`, those of its first attempt on a TPU VM that does not exist yet."""
    if args.action == "create":
        return [_create(args)]
    if args.action == "install":
        return _install(args)
    if args.action == "doctor":
        return [_on_all_workers(args, f"cd {REMOTE_DIR} && python3 -m framework.cli doctor")]
    if args.action == "train":
        return [_train(args, overrides)]
    if args.action == "delete":
        return [_delete(args)]
    if args.action == "run":
        return [_create(args), *_install(args), _train(args, overrides)]
    raise ValueError(f"unknown action {args.action!r}")


def _execute(steps: Sequence[list[str]]) -> int:
    """Runs the commands in order, each printed first; the first non-zero exit status, or 0."""
    for command in steps:
        print(shlex.join(command), flush=True)
        returncode = subprocess.run(command, cwd=REPO).returncode
        if returncode:
            print(f"tools/tpu_vm.py: exit status {returncode}, stopping.", file=sys.stderr)
            return returncode
    return 0


def vm_state(args: argparse.Namespace) -> str | None:
    """The TPU VM's state (READY, PREEMPTED, ...), or None when it does not exist (a preempted
    spot VM may be deleted by Cloud TPU itself)."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", "describe", *_target(args),
               "--format=value(state)"]
    print(shlex.join(command), flush=True)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def run_finished(workdir: str) -> bool:
    """Whether the run's summary.json says it finished: it reached its steps or stopped early
    (a preempted run's summary has fewer steps and no early stop)."""
    command = ["gcloud", "storage", "cat", f"{workdir.rstrip('/')}/summary.json"]
    print(shlex.join(command), flush=True)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        return False
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        return False
    if "steps" not in summary:
        return False
    return bool(summary.get("stopped_early")) or summary["steps"] >= summary.get("num_steps", 0)


def _attempt(args: argparse.Namespace, overrides: Sequence[str], state: str | None) -> int:
    """One try: a new TPU VM when there is none usable (deleting a preempted one first), this
    checkout installed on it, and the train command; its first non-zero exit status, or 0."""
    steps = ([_delete(args)] if state == PREEMPTED else []) + (
        [_create(args)] if state in (None, PREEMPTED) else [])
    return _execute([*steps, *_install(args), _train(args, overrides)])


def run(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Attempts until summary.json says the run finished. After a preemption the same train
    command runs again and resumes from the workdir's checkpoint; any other failure stops with
    its exit status, and so does running out of attempts."""
    state = vm_state(args)
    for attempt in range(1, args.max_attempts + 1):
        returncode = _attempt(args, overrides, state)
        if run_finished(args.workdir):
            print(f"tools/tpu_vm.py: the run in {args.workdir} finished.", flush=True)
            return 0
        state = vm_state(args)
        if state not in (None, PREEMPTED):
            print(f"tools/tpu_vm.py: the run did not finish and {args.name} was not preempted "
                  f"(state {state}); stopping.", file=sys.stderr)
            return returncode or 1
        print(f"tools/tpu_vm.py: {args.name} was preempted (attempt {attempt} of "
              f"{args.max_attempts}).", file=sys.stderr, flush=True)
    print(f"tools/tpu_vm.py: the run did not finish in {args.max_attempts} attempts; run the "
          "same command again to continue it.", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/tpu_vm.py", allow_abbrev=False,
        description="Create a Cloud TPU VM, install this checkout, train on all workers, delete; "
                    "or `run`: all of it again after each preemption until the run finished.")
    parser.add_argument("action", choices=["create", "install", "doctor", "train", "delete", "run"])
    parser.add_argument("--name", required=True, help="the TPU VM's name")
    parser.add_argument("--zone", required=True, help="e.g. us-west4-a (where the type exists)")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    parser.add_argument("--accelerator_type", default="v5litepod-8",
                        help="v5litepod-8: one host with 8 chips; v5litepod-32: a pod slice of "
                             "4 hosts (default: %(default)s)")
    parser.add_argument("--version", default="v2-alpha-tpuv5-lite",
                        help="TPU software version matching the type (default: %(default)s)")
    parser.add_argument("--spot", action="store_true",
                        help="create a spot TPU VM: cheaper, and preempted when Cloud TPU needs it")
    parser.add_argument("--config", help="train, run: experiment file, relative to the checkout")
    parser.add_argument("--workdir", help="train, run: run directory; on a pod slice and for "
                                          "run, a gs:// URL (the workers share no file system)")
    parser.add_argument("--max_attempts", type=int, default=10,
                        help="run: TPU VMs to try at most (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    trains = args.action in ("train", "run")
    if overrides and not trains:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    if trains and not (args.config and args.workdir):
        parser.error(f"{args.action} needs --config and --workdir")
    if args.action == "run" and not args.workdir.startswith("gs://"):
        parser.error("run needs a --workdir gs://BUCKET/RUN: a new TPU VM starts with an empty "
                     "disk, so the checkpoint to resume from must be in Cloud Storage")
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"{args.action} passes on only --config.SECTION.FIELD=VALUE overrides, "
                     f"got {bad}")
    if args.dry_run:
        for command in commands(args, overrides):
            print(shlex.join(command), flush=True)
        return 0
    if args.action == "run":
        return run(args, overrides)
    return _execute(commands(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
