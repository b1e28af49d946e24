"""Run jaxforge on a Cloud TPU VM (one host or a pod slice) with the `gcloud` CLI.

    python tools/tpu_vm.py create  --name NAME --zone ZONE [--accelerator_type v5litepod-32]
    python tools/tpu_vm.py install --name NAME --zone ZONE     # this checkout, on every worker
    python tools/tpu_vm.py doctor  --name NAME --zone ZONE     # do all workers agree?
    python tools/tpu_vm.py train   --name NAME --zone ZONE --config experiments/x.py \
        --workdir DIR [--config.a.b=v ...]
    python tools/tpu_vm.py delete  --name NAME --zone ZONE

Every command runs on all workers at once (`--worker=all`): JAX's multi-controller model wants
one process per host, and on a TPU VM `jax.distributed.initialize()` finds the others itself.
Commands run from the checkout's root (the archive is written there); `--dry-run` prints them
instead of running them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = "jaxforge.tar.gz"
REMOTE_DIR = "jaxforge"


def _target(args: argparse.Namespace) -> list[str]:
    target = [args.name, f"--zone={args.zone}"]
    return target + ([f"--project={args.project}"] if args.project else [])


def _on_all_workers(args: argparse.Namespace, remote: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *_target(args), "--worker=all",
            "--command", remote]


def commands(args: argparse.Namespace, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The commands one action runs, in order (each a list of arguments, not shell text)."""
    if args.action == "create":
        return [["gcloud", "compute", "tpus", "tpu-vm", "create", *_target(args),
                 f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]]
    if args.action == "install":
        return [
            ["git", "archive", "--format=tar.gz", f"--prefix={REMOTE_DIR}/",
             f"--output={ARCHIVE}", "HEAD"],
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}",
             f"--zone={args.zone}", *([f"--project={args.project}"] if args.project else []),
             "--worker=all"],
            _on_all_workers(args, f"rm -rf {REMOTE_DIR} && tar xzf {ARCHIVE} && "
                                  f'python3 -m pip install -e "./{REMOTE_DIR}[tpu,gcs]"'),
        ]
    if args.action == "doctor":
        return [_on_all_workers(args, f"cd {REMOTE_DIR} && python3 -m framework.cli doctor")]
    if args.action == "train":
        train = ["python3", "-m", "framework.cli", "train", f"--config={args.config}",
                 f"--workdir={args.workdir}", *overrides]
        return [_on_all_workers(args, f"cd {REMOTE_DIR} && {shlex.join(train)}")]
    if args.action == "delete":
        return [["gcloud", "compute", "tpus", "tpu-vm", "delete", *_target(args), "--quiet"]]
    raise ValueError(f"unknown action {args.action!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/tpu_vm.py", allow_abbrev=False,
        description="Create a Cloud TPU VM, install this checkout, train on all workers, delete.")
    parser.add_argument("action", choices=["create", "install", "doctor", "train", "delete"])
    parser.add_argument("--name", required=True, help="the TPU VM's name")
    parser.add_argument("--zone", required=True, help="e.g. us-west4-a (where the type exists)")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    parser.add_argument("--accelerator_type", default="v5litepod-8",
                        help="v5litepod-8: one host with 8 chips; v5litepod-32: a pod slice of "
                             "4 hosts (default: %(default)s)")
    parser.add_argument("--version", default="v2-alpha-tpuv5-lite",
                        help="TPU software version matching the type (default: %(default)s)")
    parser.add_argument("--config", help="train: experiment file, relative to the checkout")
    parser.add_argument("--workdir", help="train: run directory; on a pod slice, a gs:// URL "
                                          "(the workers share no file system)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.action != "train":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    if args.action == "train" and not (args.config and args.workdir):
        parser.error("train needs --config and --workdir")
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"train passes on only --config.SECTION.FIELD=VALUE overrides, got {bad}")
    for command in commands(args, overrides):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            returncode = subprocess.run(command, cwd=REPO).returncode
            if returncode:
                print(f"tools/tpu_vm.py: exit status {returncode}, stopping.", file=sys.stderr)
                return returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
