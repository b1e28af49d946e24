"""`train` and `evaluate`: one readable loop from a resolved config to a workdir.

    build the plugins -> init or restore the state -> for each dispatch: step, and at log /
    eval / checkpoint boundaries fetch metrics, evaluate, save -> final save -> summary.json

Logged metrics go to metrics.jsonl and TensorBoard event files; `train.profile_steps` traces a
window of steps into WORKDIR/profile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import nonfinite
from framework import sharding as sharding_lib
from framework.checkpoint import Checkpointer, abstract_like
from framework.data import CheckedIterator, DataSource, check_batch
from framework.errors import ConfigError, JaxforgeError
from framework.metrics import MetricsLog, read_metrics, summarize, write_json
from framework.model import Model, build_model
from framework.parameters import count_parameters, parameter_table
from framework.plugin import Callback, DataContext
from framework.preemption import StopSignal
from framework.prefetch import DevicePrefetcher, step_places_batches, to_global_array
from framework.profiler import ProfileWindow
from framework.progress import Progress
from framework.registry import registry
from framework.state import TrainState, create_train_state
from framework.step import (
    StepOptions,
    accumulated_means,
    default_unroll,
    empty_accumulator,
    guarded_names,
    make_eval_step,
    make_train_step,
    metric_names,
)
from framework.tensorboard_log import TensorBoardLog
from framework.update_rule import update_rule
from framework.workdir import WorkdirLock, check_config_unchanged


@dataclasses.dataclass
class Setup:
    """Everything built from a config before the first step."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    data: DataSource
    model: Model
    tx: optax.GradientTransformation
    penalties: dict[str, tuple[float, Any]]
    augmentations: list[Any]
    callbacks: list[Callback]
    num_steps: int
    state_sharding: Any
    init_state: Any  # jitted `rng -> TrainState`, placed with `state_sharding`.


def set_up(config: ml_collections.ConfigDict) -> Setup:
    """Build every plugin a config names, and the sharded state initialiser."""
    mesh = mesh_lib.make_mesh(config_lib.mesh_sizes(config))
    context = DataContext(seed=config.seed, process_index=jax.process_index(),
                          process_count=jax.process_count())
    data = registry.load("datasets", config.dataset.name).build(config.dataset, context)
    metadata = data.metadata
    mesh_lib.check_batch_fits(config.dataset.batch_size, mesh, "dataset.batch_size")
    if config.train.accumulation_steps > 1:
        mesh_lib.check_batch_fits(config.dataset.batch_size // config.train.accumulation_steps,
                                  mesh, "dataset.batch_size / train.accumulation_steps")
    mesh_lib.check_batch_fits(config.dataset.eval_batch_size or config.dataset.batch_size, mesh,
                              "dataset.eval_batch_size")
    num_steps = config.train.num_steps or math.ceil(
        config.train.num_epochs * metadata.num_train / config.dataset.batch_size)

    model = build_model(registry.load("models", config.model.name), config.model, metadata,
                        jnp.dtype(config.train.precision), config.model.name)

    optimizer = registry.load("optimizers", config.optimizer.name).build(config.optimizer,
                                                                          num_steps)
    penalties, transforms = {}, []
    for name, section in config.regularizers.items():
        regularizer = registry.load("regularizers", name).build(section)
        if isinstance(regularizer, optax.GradientTransformation):
            transforms.append(regularizer)
        elif "weight" in section:
            penalties[name] = (section.weight, regularizer)
        else:
            raise ConfigError(f"config.regularizers.{name}: a penalty regularizer needs a "
                              "`weight` field in its default_config().")
    tx = update_rule(optimizer, transforms, config.train)
    augmentations = [registry.load("augmentations", name).build(section)
                     for name, section in config.augmentations.items()]
    callbacks = [registry.load("callbacks", name).build(section)
                 for name, section in config.callbacks.items()]

    example = jnp.zeros((1, *metadata.input_shape), metadata.input_dtype)
    create = lambda rng: create_train_state(  # noqa: E731
        model, tx, rng, example, ema=config.train.ema_decay > 0,
        loss_scaling=config.train.precision == "float16")
    abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
    state_sharding = sharding_lib.train_state_shardings(
        config.mesh, mesh, abstract, model.annotated_variables(example).get("params", {}))
    init_state = jax.jit(create, out_shardings=state_sharding)
    return Setup(config, mesh, data, model, tx, penalties, augmentations, callbacks,
                      num_steps, state_sharding, init_state)


def is_main_process() -> bool:
    """Process 0 writes files and prints; in a multi-process run the others only compute."""
    return jax.process_index() == 0


def _chunk_sizes(start: int, end: int, per_dispatch: int) -> list[int]:
    """Dispatch sizes from `start` to `end`, aligned to multiples of `per_dispatch`."""
    sizes, step = [], start
    while step < end:
        size = min(per_dispatch - step % per_dispatch, end - step)
        sizes.append(size)
        step += size
    return sizes


def _every(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


@dataclasses.dataclass(frozen=True)
class _Boundaries:
    """The steps that log, evaluate and save; read from the config once, not at every step."""

    log_every: int
    eval_every: int
    checkpoint_every: int
    last: int

    def logs(self, step: int) -> bool:
        return _every(step, self.log_every, self.last)

    def evaluates(self, step: int) -> bool:
        return _every(step, self.eval_every, self.last)

    def saves(self, step: int) -> bool:
        return _every(step, self.checkpoint_every, self.last)

    def any(self, step: int) -> bool:
        return self.logs(step) or self.evaluates(step) or self.saves(step)


def _evaluate(setup: Setup, eval_step: Any, state: TrainState) -> dict[str, float]:
    sharding = mesh_lib.batch_sharding(setup.mesh)
    accumulator = None
    for batch in setup.data.eval_batches():
        check_batch(batch, setup.data.metadata, setup.config.dataset.name)
        batch = to_global_array(batch, sharding)
        if accumulator is None:  # Metric names come from the model's loss: ask for the shapes.
            shapes = jax.eval_shape(eval_step, state, empty_accumulator(), batch)
            accumulator = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        previous, accumulator = accumulator, eval_step(state, accumulator, batch)
        previous["count"].block_until_ready()  # At most two dispatches in flight (see train).
    if accumulator is None:
        raise JaxforgeError(f"Dataset {setup.config.dataset.name!r} has no eval examples.")
    return accumulated_means(jax.device_get(accumulator), "eval")


def _jit_train_step(setup: Setup) -> Any:
    """The train step as the loop runs it: the state donated, the stacked batches placed by
    `in_shardings` (numpy from the prefetch thread where `step_places_batches`)."""
    train_cfg = setup.config.train
    options = StepOptions(train_cfg.accumulation_steps, train_cfg.ema_decay,
                          train_cfg.on_nonfinite, unroll=default_unroll())
    replicated = mesh_lib.replicated(setup.mesh)
    return jax.jit(make_train_step(setup.model, setup.tx, setup.penalties,
                                   setup.augmentations, options), donate_argnums=(0,),
                   in_shardings=(setup.state_sharding, replicated,
                                 mesh_lib.batch_sharding(setup.mesh, stacked=True)),
                   out_shardings=(setup.state_sharding, replicated))


def _jit_eval_step(setup: Setup) -> Any:
    return jax.jit(make_eval_step(setup.model))


def _abstract_state(setup: Setup) -> Any:
    abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
    return abstract_like(abstract, setup.state_sharding)


def _provenance(config: ml_collections.ConfigDict) -> dict[str, Any]:
    plugins = [registry.resolve(kind, name).as_dict()
               for kind, name, _ in config_lib.named_plugins(config)]
    return {"plugins": plugins, "config": config.to_dict(), "jax_version": jax.__version__}


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          allow_config_change: bool = False, restore_step: int | None = None) -> dict[str, Any]:
    """Train (or resume) the setup `config` in `workdir`; returns the summary.

    A workdir holds one run: a second concurrent run is refused, and resuming with a config that
    differs from the workdir's config.json needs `allow_config_change`. `restore_step` resumes
    from an older checkpoint; the later ones are moved to `abandoned_checkpoints/`.
    """
    if not config.is_locked:
        config = config_lib.resolve_config(config)
    workdir = Path(workdir)
    with WorkdirLock(workdir) if is_main_process() else contextlib.nullcontext():
        return _train(config, workdir, allow_config_change, restore_step)


def _restore_point(checkpointer: Checkpointer, restore_step: int | None) -> int:
    if restore_step is None:
        return checkpointer.latest_step() or 0
    if restore_step not in checkpointer.all_steps():
        raise JaxforgeError(f"--restore_step={restore_step}: no such checkpoint in "
                            f"{checkpointer.directory}; saved steps: {checkpointer.all_steps()}.")
    return restore_step


def _pending_metrics(accumulator: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(accumulator).items()}


def _train(config: ml_collections.ConfigDict, workdir: Path, allow_config_change: bool,
           restore_step: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    is_main = is_main_process()
    setup = set_up(config)
    train_cfg, num_steps = config.train, setup.num_steps
    if is_main:
        check_config_unchanged(workdir, config, allow_config_change)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config_lib.to_json(config) + "\n")
        write_json(workdir / "plugins.json", _provenance(config)["plugins"])

    checkpointer = Checkpointer(workdir / "checkpoints", config.checkpoint.max_to_keep,
                                config.checkpoint.async_save)
    iterator = CheckedIterator(setup.data.train_iterator(), setup.data.metadata,
                               config.dataset.name)
    start_step, pending = _restore_point(checkpointer, restore_step), {}
    if start_step:
        set_aside = checkpointer.set_aside_after(start_step) if is_main else []
        state, data_state, pending = checkpointer.restore(start_step, _abstract_state(setup))
        iterator.set_state(data_state)
        if set_aside:
            print(f"Moved the later checkpoints {set_aside} to "
                  f"{workdir / 'abandoned_checkpoints'}.")
    else:
        state = setup.init_state(jax.random.PRNGKey(config.seed))
    data_state = iterator.get_state()

    progress = Progress(num_steps, start_step, enabled=is_main)
    parameters = parameter_table(state.params)
    if is_main:
        (workdir / "parameters.txt").write_text(parameters + "\n")
    progress.message(parameters)
    progress.message(
        f"Training {config.model.name} ({count_parameters(state.params):,} parameters) on "
        f"{config.dataset.name} for {num_steps} steps; mesh {dict(setup.mesh.shape)} over "
        f"{jax.device_count()} {jax.default_backend()} device(s); workdir {workdir}")
    metrics_log = MetricsLog(workdir / "metrics.jsonl", start_step, enabled=is_main)
    tensorboard = TensorBoardLog(workdir, start_step, enabled=is_main)
    tensorboard.write_hparams(config)
    profiler = ProfileWindow(train_cfg.profile_steps, workdir / "profile", num_steps)
    if start_step:
        progress.message(f"Resuming from the step-{start_step} checkpoint in {workdir}.")

    step_fn = _jit_train_step(setup)
    eval_step = _jit_eval_step(setup)
    batch_sharding = mesh_lib.batch_sharding(setup.mesh, stacked=True)
    replicated = mesh_lib.replicated(setup.mesh)
    prefetcher = DevicePrefetcher(
        iterator, _chunk_sizes(start_step, num_steps, train_cfg.steps_per_dispatch),
        (lambda stacked: stacked) if step_places_batches()
        else lambda stacked: to_global_array(stacked, batch_sharding))

    boundaries = _Boundaries(train_cfg.log_every_steps, train_cfg.eval_every_steps,
                             config.checkpoint.every_steps, num_steps)
    stop_on_nonfinite = train_cfg.on_nonfinite == "stop"
    loss_scaling = train_cfg.precision == "float16"
    accumulator, zero_accumulator = None, None
    step, stop_reason, preempted_by = start_step, "", ""
    last_log_time, last_log_step = time.perf_counter(), start_step
    paused = 0.0  # Seconds spent evaluating and saving since the last log: not training time.
    with StopSignal() as stop_signal:
        try:
            for batches, data_state in prefetcher:
                if zero_accumulator is None:
                    shapes = jax.eval_shape(step_fn, state, empty_accumulator(), batches)[1]
                    zero_accumulator = jax.jit(
                        lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                        out_shardings=replicated)
                    accumulator = zero_accumulator()
                    if pending.keys() == accumulator.keys():  # Sums since the last log.
                        accumulator = jax.device_put(
                            {k: np.asarray(v, accumulator[k].dtype) for k, v in pending.items()},
                            replicated)
                profiler.before_dispatch(step)
                previous = accumulator
                state, accumulator = step_fn(state, accumulator, batches)
                # Wait for the previous dispatch (its accumulator is not donated): the host stays
                # one dispatch ahead, device memory for queued batches stays bounded, and XLA:CPU's
                # in-process collectives cannot deadlock on a pile of queued multi-device programs.
                previous["count"].block_until_ready()
                step += batches["inputs"].shape[0]
                profiler.after_dispatch(step, accumulator)

                record: dict[str, float] = {}
                nonfinite_stop = (_nonfinite_stop(accumulator, loss_scaling)
                                  if stop_on_nonfinite and boundaries.any(step) else "")
                if boundaries.logs(step):
                    record.update(accumulated_means(jax.device_get(accumulator), "train"))
                    now = time.perf_counter()
                    elapsed = now - last_log_time - paused
                    record["steps_per_sec"] = (step - last_log_step) / elapsed
                    last_log_time, last_log_step, paused = now, step, 0.0
                    accumulator = zero_accumulator()
                    for callback in setup.callbacks:
                        callback.on_log(step, record, state)
                if boundaries.evaluates(step) and not nonfinite_stop:
                    pause_start = time.perf_counter()
                    eval_metrics = _evaluate(setup, eval_step, state)
                    paused += time.perf_counter() - pause_start
                    record.update(eval_metrics)
                    for callback in setup.callbacks:
                        callback.on_eval(step, eval_metrics, state)
                if record:
                    metrics_log.write(step, record)
                    tensorboard.write(step, record)
                    progress.update(step, record)
                if nonfinite_stop:  # The state is the last good one, but not that of this step.
                    stop_reason = nonfinite_stop
                    progress.message(f"Stopping at step {step}: {stop_reason}")
                    break
                stopper = next((c for c in setup.callbacks if c.stop_training), None)
                if stopper is not None:
                    stop_reason = (stopper.stop_reason
                                   or f"{type(stopper).__name__} stopped training")
                if step < num_steps and stop_signal.should_stop():
                    preempted_by = stop_signal.signal_name or "a preemption notice"
                if step == num_steps or stop_reason:
                    state = _final_state(setup, state)
                if boundaries.saves(step) or stop_reason or preempted_by:
                    pause_start = time.perf_counter()
                    checkpointer.save(step, state, data_state, _pending_metrics(accumulator),
                                      _provenance(config))
                    paused += time.perf_counter() - pause_start
                    for callback in setup.callbacks:
                        callback.on_checkpoint(step, state)
                if stop_reason:
                    progress.message(f"Stopping early at step {step}: {stop_reason}")
                    break
                if preempted_by:
                    progress.message(
                        f"Stopped at step {step} by {preempted_by}; checkpoint saved in "
                        f"{checkpointer.directory}. Run the same command again to resume.")
                    break
        finally:
            profiler.stop()  # Only still tracing when training ended inside the window.
            prefetcher.close()
            tensorboard.close()
            progress.close()
            checkpointer.wait()
            last_checkpoint = checkpointer.latest_step()
            checkpointer.close()

    summary = summarize(read_metrics(workdir / "metrics.jsonl") if is_main else [],
                        train_cfg.best_metric, train_cfg.best_mode)
    wall_time = time.perf_counter() - started
    summary.update({
        "steps": step, "num_steps": num_steps, "resumed_from_step": start_step,
        "stopped_early": bool(stop_reason), "stop_reason": stop_reason,
        "preempted_by": preempted_by,
        "stop_step": step if stop_reason else None,
        "skipped_steps": int(state.skipped_steps),
        "wall_time_s": round(wall_time, 3),
        # Steps of this invocation over its wall time: setup, compiles and evaluations included.
        "steps_per_sec": round((step - start_step) / wall_time, 3),
        "checkpoint": (str((workdir / "checkpoints" / str(last_checkpoint)).absolute())
                       if last_checkpoint is not None else None),
    })
    sparsity = optax.tree_utils.tree_get(state.opt_state, "sparsity")
    if sparsity is not None:
        summary["sparsity"] = float(sparsity)
    for callback in setup.callbacks:
        callback.on_end(summary, state)
    if is_main:
        write_json(workdir / "summary.json", summary)
        progress.message(_summary_line(summary))
    return summary


def _nonfinite_stop(accumulator: dict[str, Any], loss_scaling: bool) -> str:
    """Under `train.on_nonfinite=stop`, at a log/eval/checkpoint boundary: why to stop, if so."""
    names = guarded_names(metric_names(accumulator), loss_scaling)
    return nonfinite.stop_message(jax.device_get(accumulator), names)


def _final_state(setup: Setup, state: TrainState) -> TrainState:
    """The state the run ends with: a callback may replace it (early stopping's best)."""
    for callback in setup.callbacks:
        candidate = callback.final_state(state)
        if candidate is not state:
            state = jax.device_put(candidate, setup.state_sharding)
    return state


def _summary_line(summary: dict[str, Any]) -> str:
    """What a run ends with: how far and fast it went, its final and best metrics, where it is."""
    def metrics(record: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step") or "none"

    best = summary["best"]
    best_text = (f"{summary['best_metric']} {best[summary['best_metric']]:.4f} at step "
                 f"{best['step']}" if best else f"no {summary['best_metric']} logged")
    resumed = summary["resumed_from_step"]
    resumed_text = f" (resumed from step {resumed})" if resumed else ""
    return (f"Done: {summary['steps']} steps{resumed_text} in {summary['wall_time_s']:.1f}s, "
            f"{summary['steps_per_sec']:.1f} steps/s\n"
            f"  final: {metrics(summary['final'])}\n"
            f"  best:  {best_text}\n"
            f"  checkpoint: {summary['checkpoint']}")


def restore(workdir: str | Path, step: int | None = None
            ) -> tuple[Setup, TrainState, int]:
    """Rebuild a workdir's setup from its config.json and restore a checkpoint's state."""
    workdir = Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.exists():
        raise JaxforgeError(f"{workdir} has no config.json: it is not a jaxforge workdir.")
    setup = set_up(config_lib.from_json_file(config_file))
    checkpointer = Checkpointer(workdir / "checkpoints", setup.config.checkpoint.max_to_keep,
                                async_save=False)
    try:
        step = step if step is not None else checkpointer.latest_step()
        if step is None:
            raise JaxforgeError(f"{workdir / 'checkpoints'} holds no checkpoint; train first.")
        state, _, _ = checkpointer.restore(step, _abstract_state(setup))
    finally:
        checkpointer.close()
    return setup, state, step


def evaluate(workdir: str | Path, step: int | None = None) -> dict[str, Any]:
    """Evaluate a workdir's latest (or given) checkpoint on the whole eval split."""
    setup, state, step = restore(workdir, step)
    return {"step": step, **_evaluate(setup, _jit_eval_step(setup), state)}
