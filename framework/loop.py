"""`train` and `evaluate`: one readable loop from a resolved config to a workdir.

`_train` runs the phases of a run in order, one function each:

    _finished_run           a run this workdir already finished: its summary, nothing written
    _set_up_workdir         build the plugins; config.json, plugins.json
    _restore_or_initialise  the state, the data position and pending metric sums (`_Run`)
    _open_loop              parameters.txt, the start message, the outputs (`_Loop`)
    _dispatch_loop          the steps, one dispatch at a time, until the last or a stop
      _at_boundaries        after each dispatch: log, evaluate, save, decide to stop
    _finish                 summary.json and the summary line

Logged metrics go to metrics.jsonl and TensorBoard event files; `train.profile_steps` traces a
window of steps into WORKDIR/profile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils.epath import Path

from framework import config as config_lib
from framework import init_from, kinds, nonfinite
from framework import mesh as mesh_lib
from framework import sharding as sharding_lib
from framework.checkpoint import Checkpointer, abstract_like, saved_steps
from framework.data import CheckedIterator, DataSource, check_batch
from framework.errors import ConfigError, JaxforgeError
from framework.loss import build_loss, derived_metrics
from framework.metrics import (
    MetricsLog,
    eval_record,
    read_metrics,
    read_summary,
    summarize,
    write_json,
)
from framework.model import Model, build_model
from framework.normalization import model_metadata, normalizing
from framework.parameters import count_parameters, parameter_table
from framework.plugin import Callback, DataContext
from framework.preemption import StopSignal
from framework.prefetch import DevicePrefetcher, InlineFeed, step_places_batches, to_global_array
from framework.profiler import ProfileWindow
from framework.progress import Progress
from framework.registry import registry
from framework.state import TrainState, create_train_state
from framework.step import (
    StepOptions,
    accumulated_means,
    default_unroll,
    guarded_names,
    logged_metrics,
    make_eval_step,
    make_train_step,
    metric_names,
    zero_metrics,
)
from framework.tensorboard_log import TensorBoardLog
from framework.update_rule import update_rule
from framework.workdir import WorkdirLock, absolute, check_config_unchanged, config_changes


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
    data = registry.load(kinds.DATASETS, config.dataset.name).build(config.dataset, context)
    metadata = model_metadata(data.metadata)  # Float inputs where normalised on the device.
    mesh_lib.check_batch_fits(config.dataset.batch_size, mesh, "dataset.batch_size")
    if config.train.accumulation_steps > 1:
        mesh_lib.check_batch_fits(config.dataset.batch_size // config.train.accumulation_steps,
                                  mesh, "dataset.batch_size / train.accumulation_steps")
    mesh_lib.check_batch_fits(config.dataset.eval_batch_size or config.dataset.batch_size, mesh,
                              "dataset.eval_batch_size")
    num_steps = config_lib.num_steps(config, metadata.num_train)

    model_plugin = registry.load(kinds.MODELS, config.model.name)
    model = build_model(model_plugin, config.model, metadata, jnp.dtype(config.train.precision),
                        config.model.name, build_loss(model_plugin, config, metadata))

    optimizer = registry.load(kinds.OPTIMIZERS, config.optimizer.name).build(config.optimizer,
                                                                          num_steps)
    penalties, transforms = {}, []
    for name, section in config.regularizers.items():
        regularizer = registry.load(kinds.REGULARIZERS, name).build(section)
        if isinstance(regularizer, optax.GradientTransformation):
            transforms.append(regularizer)
        elif "weight" in section:
            penalties[name] = (section.weight, regularizer)
        else:
            raise ConfigError(f"config.regularizers.{name}: a penalty regularizer needs a "
                              "`weight` field in its default_config().")
    tx = update_rule(optimizer, transforms, config.train)
    augmentations = [registry.load(kinds.AUGMENTATIONS, name).build(section)
                     for name, section in config.augmentations.items()]
    callbacks = [registry.load(kinds.CALLBACKS, name).build(section)
                 for name, section in config.callbacks.items()]

    example = jnp.zeros((1, *metadata.input_shape), metadata.input_dtype)
    create = lambda rng: create_train_state(  # noqa: E731
        model, tx, rng, example, ema=config.train.ema_decay > 0,
        loss_scaling=config.train.precision == "float16")
    abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
    _check_logged_names(abstract.opt_state)
    state_sharding = sharding_lib.train_state_shardings(
        config.mesh, mesh, abstract, model.annotated_variables(example).get("params", {}),
        getattr(model_plugin, "logical_axis_rules", ()))
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
            accumulator = zero_metrics(eval_step, state, batch)
        previous, accumulator = accumulator, eval_step(state, accumulator, batch)
        previous["count"].block_until_ready()  # At most two dispatches in flight (see train).
    if accumulator is None:
        raise JaxforgeError(f"Dataset {setup.config.dataset.name!r} has no eval examples.")
    return accumulated_means(jax.device_get(accumulator), "eval",
                             derived=derived_metrics(setup.model.loss))


def _jit_train_step(setup: Setup) -> Any:
    """The train step as the loop runs it: the state donated, the stacked batches placed by
    `in_shardings` (numpy read inline where `step_places_batches`)."""
    train_cfg = setup.config.train
    options = StepOptions(train_cfg.accumulation_steps, train_cfg.ema_decay,
                          train_cfg.on_nonfinite, unroll=default_unroll())
    replicated = mesh_lib.replicated(setup.mesh)
    step = make_train_step(setup.model, setup.tx, setup.penalties, setup.augmentations, options)
    return jax.jit(normalizing(step, setup.data.metadata.normalize), donate_argnums=(0,),
                   in_shardings=(setup.state_sharding, replicated,
                                 mesh_lib.batch_sharding(setup.mesh, stacked=True)),
                   out_shardings=(setup.state_sharding, replicated))


def _jit_eval_step(setup: Setup) -> Any:
    return jax.jit(normalizing(make_eval_step(setup.model), setup.data.metadata.normalize))


def _abstract_state(setup: Setup) -> Any:
    abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
    return abstract_like(abstract, setup.state_sharding)


def _provenance(config: ml_collections.ConfigDict) -> dict[str, Any]:
    plugins = [registry.resolve(kind, name).as_dict()
               for kind, name, _ in config_lib.named_plugins(config)]
    return {"plugins": plugins, "config": config.to_dict(), "jax_version": jax.__version__}


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          allow_config_change: bool = False, restore_step: int | None = None,
          callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the experiment `config` in `workdir`; returns the summary.

    A workdir holds one run: a second concurrent run is refused, and resuming with a config that
    differs from the workdir's config.json needs `allow_config_change`. `restore_step` resumes
    from an older checkpoint; the later ones are moved to `abandoned_checkpoints/`. A run that
    already finished (reached its steps, or stopped early) is not run again: its summary is
    returned and its files are left as they are. `callbacks` are built callbacks that run after
    the config's own; they are not part of the config (config.json does not name them): a
    program that drives runs listens with them (`jaxforge tune` reports evaluations to Optuna).
    """
    if not config.is_locked:
        config = config_lib.resolve_config(config)
    workdir = Path(workdir)
    with WorkdirLock(workdir) if is_main_process() else contextlib.nullcontext():
        return _train(config, workdir, allow_config_change, restore_step, callbacks)


def _train(config: ml_collections.ConfigDict, workdir: Path, allow_config_change: bool,
           restore_step: int | None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """The phases of a run, in order: the config check and whether the run already finished,
    set up, restore or initialise, open the outputs, the dispatch loop (which runs the
    boundaries), finish."""
    started = time.perf_counter()
    if is_main_process():
        check_config_unchanged(workdir, config, allow_config_change)
    finished = _finished_run(config, workdir, restore_step)
    if finished is not None:
        return finished
    setup, prepared = _set_up_workdir(config, workdir, restore_step)
    setup.callbacks.extend(callbacks)
    checkpointer = Checkpointer(workdir / "checkpoints", config.checkpoint.max_to_keep,
                                config.checkpoint.async_save)
    iterator = CheckedIterator(setup.data.train_iterator(), setup.data.metadata,
                               config.dataset.name)
    run = _restore_or_initialise(setup, checkpointer, iterator, workdir, restore_step,
                                 prepared)
    loop = _open_loop(setup, checkpointer, workdir, run)
    prefetcher = _prefetcher(setup, iterator, run.step)
    with StopSignal() as stop_signal:
        try:
            _dispatch_loop(loop, run, prefetcher, stop_signal)
        finally:
            loop.profiler.stop()  # Only still tracing when training ended inside the window.
            prefetcher.close()
            loop.tensorboard.close()
            loop.metrics_log.close()
            loop.progress.close()
            checkpointer.wait()
            last_checkpoint = checkpointer.latest_step()
            checkpointer.close()
    return _finish(loop, run, workdir, time.perf_counter() - started, last_checkpoint)


# A finished run ------------------------------------------------------------------------------


def _finished_run(config: ml_collections.ConfigDict, workdir: Path,
                  restore_step: int | None) -> dict[str, Any] | None:
    """The summary of the run this workdir already finished, or None when there is one to
    train. Decided before anything is built, from summary.json and the checkpoint directory
    names; a finished run's files are left as they are. Every process follows process 0."""
    summary = _finished_summary(config, workdir, restore_step) if is_main_process() else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        finished = multihost_utils.broadcast_one_to_all(np.int32(summary is not None))
        if not is_main_process() and int(finished):
            summary = read_summary(workdir) or {}
    return summary


def _finished_summary(config: ml_collections.ConfigDict, workdir: Path,
                      restore_step: int | None) -> dict[str, Any] | None:
    """A run is finished when its summary.json is that of its latest checkpoint (the summary
    names it), it was not preempted, and it reached the config's number of steps or stopped
    early (early stopping, a non-finite step). `--restore_step` of the latest checkpoint
    continues a run that stopped early; of an older one, any run."""
    summary = read_summary(workdir)
    if not summary or summary.get("preempted_by") or "steps" not in summary:
        return None
    saved = saved_steps(workdir / "checkpoints")
    latest = saved[-1] if saved else None
    checkpoint = summary.get("checkpoint")
    if (Path(checkpoint).name if checkpoint else None) != (str(latest) if saved else None):
        return None  # A later invocation saved checkpoints and did not finish.
    if restore_step is not None and (restore_step != latest or summary.get("stopped_early")):
        return None
    target = _target_steps(config, workdir, summary)
    if not summary.get("stopped_early") and summary["steps"] < target:
        return None
    if is_main_process():
        print(_finished_message(summary, workdir, target, latest))
    return summary


def _target_steps(config: ml_collections.ConfigDict, workdir: Path,
                  summary: dict[str, Any]) -> int:
    """The config's number of steps; for a run given in epochs, the summary's when neither the
    dataset nor the epochs changed, else counted from the dataset's train examples."""
    if config.train.num_steps is not None:
        return config.train.num_steps
    counted_from = ("seed:", "dataset.", "train.num_epochs:", "train.num_steps:")
    if ("num_steps" in summary
            and not any(c.startswith(counted_from) for c in config_changes(workdir, config))):
        return summary["num_steps"]
    return config_lib.num_steps(config, config_lib.train_examples(config))


def _finished_message(summary: dict[str, Any], workdir: Path, target: int,
                      latest: int | None) -> str:
    steps = summary["steps"]
    if summary.get("stopped_early"):
        stopped = f"stopped early at step {summary.get('stop_step', steps)}"
        reason = summary.get("stop_reason")
        again = (f"To train it further, resume its last checkpoint: --restore_step={latest} "
                 "(with --allow_config_change for a changed config); or train in another "
                 "--workdir." if latest is not None else "To train again, use another --workdir.")
        head = f"{workdir} holds a finished run: it {stopped}" + (f" ({reason})" if reason else "")
    else:
        asked = f"{steps} of {target} steps" if steps == target else (
            f"{steps} steps (the config asks for {target})")
        head = f"{workdir} holds a finished run: {asked}"
        again = (f"To train it longer, resume it with more steps: --config.train.num_steps=N "
                 f"(N > {steps}) and --allow_config_change.")
    return (f"{head}. Nothing to train: its files are left as they are.\n{again}\n"
            f"From its summary.json:\n{_summary_line(summary)}")


# Set up --------------------------------------------------------------------------------------


def _set_up_workdir(config: ml_collections.ConfigDict, workdir: Path, restore_step: int | None
                    ) -> tuple[Setup, init_from.Prepared | None]:
    """Build the plugins, then record in the workdir what runs: config.json and plugins.json
    are written before any step, so that even a run that fails says what it was. (`_train`
    checked the config against the workdir's before.) A run that starts (no checkpoint to
    resume) first finds and checks its `init_from` source, so that bad input leaves the
    workdir as it was."""
    setup = set_up(config)
    starts = restore_step is None and not saved_steps(workdir / "checkpoints")
    prepared = init_from.prepare(setup) if starts else None
    if is_main_process():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config_lib.to_json(config) + "\n")
        write_json(workdir / "plugins.json", _provenance(config)["plugins"])
    return setup, prepared


@dataclasses.dataclass
class _Timer:
    """steps_per_sec between two logs, without the time paused to evaluate and save."""

    last_step: int
    last_time: float = dataclasses.field(default_factory=time.perf_counter)
    paused_s: float = 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Around work that is not training (evaluating, saving)."""
        start = time.perf_counter()
        yield
        self.paused_s += time.perf_counter() - start

    def steps_per_sec(self, step: int) -> float:
        """Since the previous call (or the start); starts the next interval."""
        now = time.perf_counter()
        rate = (step - self.last_step) / (now - self.last_time - self.paused_s)
        self.last_time, self.last_step, self.paused_s = now, step, 0.0
        return rate


@dataclasses.dataclass
class _Run:
    """What the loop carries from one dispatch to the next, and what `_finish` reports."""

    start_step: int
    step: int
    state: TrainState
    data_state: dict[str, Any]  # The train iterator's position after `step`.
    pending: dict[str, float]  # Metric sums a checkpoint saved between two logs.
    described: tuple[str, ...]  # The names of the optimizer state's `LoggedState` metrics.
    accumulator: Any = None  # On device: the train metric sums since the last log.
    zeros: Any = None  # On device: the accumulator right after a log.
    stop_reason: str = ""  # Why training stopped early (non-finite, a callback), if it did.
    preempted_by: str = ""  # The signal or preemption notice that ended the run, if one did.
    final_state_by: str = ""  # The callback whose `final_state` replaced the last state, if one,
    final_state_step: int | None = None  # and the step of the state it put in its place.
    timer: _Timer = dataclasses.field(default_factory=lambda: _Timer(0))


# Restore or initialise -----------------------------------------------------------------------


def _restore_or_initialise(setup: Setup, checkpointer: Checkpointer, iterator: CheckedIterator,
                           workdir: Path, restore_step: int | None,
                           prepared: init_from.Prepared | None = None) -> _Run:
    """Continue from a checkpoint when there is one: its state, data position and the metric
    sums pending since its last log, so that a resumed run logs what an uninterrupted one
    would (`init_from` is then ignored). Otherwise start from the seed, with what `prepared`
    (`config.init_from`) loads in place of the seed's parameters."""
    start_step, pending = _restore_point(checkpointer, restore_step), {}
    if start_step:
        set_aside = checkpointer.set_aside_after(start_step) if is_main_process() else []
        state, data_state, pending = checkpointer.restore(start_step, _abstract_state(setup))
        iterator.set_state(data_state)
        if set_aside:
            print(f"Moved the later checkpoints {set_aside} to "
                  f"{workdir / 'abandoned_checkpoints'}.")
    else:
        state = init_from.apply(setup, prepared, workdir)
    return _Run(start_step, start_step, state, iterator.get_state(), pending,
                described=tuple(logged_metrics(state.opt_state)))


def _restore_point(checkpointer: Checkpointer, restore_step: int | None) -> int:
    if restore_step is None:
        return checkpointer.latest_step() or 0
    if restore_step not in checkpointer.all_steps():
        raise JaxforgeError(f"--restore_step={restore_step}: no such checkpoint in "
                            f"{checkpointer.directory}; saved steps: {checkpointer.all_steps()}.")
    return restore_step


# Open the outputs ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Loop:
    """What the dispatch loop uses and does not change: the compiled steps and the outputs."""

    setup: Setup
    step_fn: Any
    eval_step: Any
    checkpointer: Checkpointer
    boundaries: _Boundaries
    progress: Progress
    metrics_log: MetricsLog
    tensorboard: TensorBoardLog
    profiler: ProfileWindow

    def write(self, step: int, record: dict[str, float]) -> None:
        self.metrics_log.write(step, record)
        self.tensorboard.write(step, record)
        self.progress.update(step, record)


def _open_loop(setup: Setup, checkpointer: Checkpointer, workdir: Path, run: _Run) -> _Loop:
    """Say what trains (parameters.txt, the start message; the state is needed, so this comes
    after restoring) and open the outputs. A resumed run's metrics.jsonl loses the lines past
    its checkpoint: those steps run again."""
    config, is_main = setup.config, is_main_process()
    progress = Progress(setup.num_steps, run.start_step, enabled=is_main)
    parameters = parameter_table(run.state.params)
    if is_main:
        (workdir / "parameters.txt").write_text(parameters + "\n")
    progress.message(parameters)
    progress.message(
        f"Training {config.model.name} ({count_parameters(run.state.params):,} parameters) on "
        f"{config.dataset.name} for {setup.num_steps} steps; mesh {dict(setup.mesh.shape)} over "
        f"{jax.device_count()} {jax.default_backend()} device(s); workdir {workdir}")
    metrics_log = MetricsLog(workdir / "metrics.jsonl", run.start_step, enabled=is_main)
    tensorboard = TensorBoardLog(workdir, run.start_step, enabled=is_main)
    tensorboard.write_hparams(config)
    profiler = ProfileWindow(config.train.profile_steps, workdir / "profile", setup.num_steps)
    if run.start_step:
        progress.message(f"Resuming from the step-{run.start_step} checkpoint in {workdir}.")
    boundaries = _Boundaries(config.train.log_every_steps, config.train.eval_every_steps,
                             config.checkpoint.every_steps, setup.num_steps)
    return _Loop(setup, _jit_train_step(setup), _jit_eval_step(setup), checkpointer, boundaries,
                 progress, metrics_log, tensorboard, profiler)


def _prefetcher(setup: Setup, iterator: CheckedIterator, start_step: int
                ) -> DevicePrefetcher | InlineFeed:
    """Stacks of `steps_per_dispatch` batches: read and placed ahead of the step that uses them
    by a thread, or, where the step places them (one CPU process), read as they are needed."""
    sizes = _chunk_sizes(start_step, setup.num_steps, setup.config.train.steps_per_dispatch)
    if step_places_batches():
        return InlineFeed(iterator, sizes)
    batch_sharding = mesh_lib.batch_sharding(setup.mesh, stacked=True)
    return DevicePrefetcher(iterator, sizes,
                            lambda stacked: to_global_array(stacked, batch_sharding))


# The dispatch loop ---------------------------------------------------------------------------


def _dispatch_loop(loop: _Loop, run: _Run, prefetcher: DevicePrefetcher | InlineFeed,
                   stop_signal: StopSignal) -> None:
    """Dispatch the steps until the last one or a reason to stop. The host waits for nothing
    but the previous dispatch, so it stays one dispatch ahead of the devices; metrics stay on
    device until a boundary fetches them."""
    run.timer = _Timer(run.step)
    for batches, data_state in prefetcher:
        run.data_state = data_state
        if run.accumulator is None:
            _start_accumulating(loop, run, batches)
        loop.profiler.before_dispatch(run.step)
        previous = run.accumulator
        run.state, run.accumulator = loop.step_fn(run.state, run.accumulator, batches)
        # Wait for the previous dispatch (its accumulator is not donated): the host stays one
        # dispatch ahead, device memory for queued batches stays bounded, and XLA:CPU's
        # in-process collectives cannot deadlock on a pile of queued multi-device programs.
        previous["count"].block_until_ready()
        run.step += batches["inputs"].shape[0]
        loop.progress.dispatched(run.step)
        loop.profiler.after_dispatch(run.step, run.accumulator)
        if _at_boundaries(loop, run, stop_signal):
            break


def _start_accumulating(loop: _Loop, run: _Run, batches: Any) -> None:
    """Before the first dispatch: zeros shaped like the metrics the model names (kept, to
    restart from after each log), or the sums a checkpoint saved between two logs."""
    replicated = mesh_lib.replicated(loop.setup.mesh)
    state = run.state
    run.zeros = jax.jit(lambda: zero_metrics(loop.step_fn, state, batches),
                        out_shardings=replicated)()
    run.accumulator = run.zeros
    if run.pending.keys() == run.zeros.keys():  # Sums since the last log.
        run.accumulator = jax.device_put(
            {k: np.asarray(v, run.zeros[k].dtype) for k, v in run.pending.items()}, replicated)


# The boundaries: log, evaluate, save, stop ---------------------------------------------------


def _at_boundaries(loop: _Loop, run: _Run, stop_signal: StopSignal) -> bool:
    """After each dispatch: log, evaluate and save at the steps the config names, and say
    whether to stop. After a non-finite step the run stops without evaluating or saving: its
    state is the last good one, not that of this step."""
    step, boundaries, setup = run.step, loop.boundaries, loop.setup
    nonfinite_stop = (_nonfinite_stop(setup, run)  # The config is read at boundaries only.
                      if boundaries.any(step) and setup.config.train.on_nonfinite == "stop"
                      else "")
    record = _log(loop, run) if boundaries.logs(step) else {}
    if boundaries.evaluates(step) and not nonfinite_stop:
        record.update(_evaluate_now(loop, run))
    if record:
        loop.write(step, record)
    if nonfinite_stop:
        run.stop_reason = nonfinite_stop
        loop.progress.message(f"Stopping at step {step}: {run.stop_reason}")
        return True
    stopper = next((c for c in setup.callbacks if c.stop_training), None)
    if stopper is not None:
        run.stop_reason = stopper.stop_reason or f"{type(stopper).__name__} stopped training"
    if step < setup.num_steps and stop_signal.should_stop():
        run.preempted_by = stop_signal.signal_name or "a preemption notice"
    if step == setup.num_steps or run.stop_reason:
        run.state, replaced_by, replaced_step = _final_state(setup, run.state)
        if replaced_by:
            run.final_state_by, run.final_state_step = replaced_by, replaced_step
    if boundaries.saves(step) or run.stop_reason or run.preempted_by:
        _save(loop, run)
    if run.stop_reason:
        loop.progress.message(f"Stopping early at step {step}: {run.stop_reason}")
    elif run.preempted_by:
        loop.progress.message(
            f"Stopped at step {step} by {run.preempted_by}; checkpoint saved in "
            f"{loop.checkpointer.directory}. Run the same command again to resume.")
    return bool(run.stop_reason or run.preempted_by)


def _log(loop: _Loop, run: _Run) -> dict[str, float]:
    """Fetch the train metric sums as means (the loop's one host sync between boundaries)
    and restart them from zero."""
    record = accumulated_means(jax.device_get(run.accumulator), "train", run.described,
                               derived_metrics(loop.setup.model.loss))
    record["steps_per_sec"] = run.timer.steps_per_sec(run.step)
    run.accumulator = run.zeros
    for callback in loop.setup.callbacks:
        callback.on_log(run.step, record, run.state)
    return record


def _evaluate_now(loop: _Loop, run: _Run) -> dict[str, float]:
    """The whole eval split; its time is not training time."""
    with run.timer.paused():
        eval_metrics = _evaluate(loop.setup, loop.eval_step, run.state)
    for callback in loop.setup.callbacks:
        callback.on_eval(run.step, eval_metrics, run.state)
    return eval_metrics


def _save(loop: _Loop, run: _Run) -> None:
    """A checkpoint with the data position and the metric sums since the last log, so that a
    run resumed from it continues exactly; its time is not training time."""
    with run.timer.paused():
        loop.checkpointer.save(run.step, run.state, run.data_state,
                               _pending_metrics(run.accumulator), _provenance(loop.setup.config))
    for callback in loop.setup.callbacks:
        callback.on_checkpoint(run.step, run.state)


def _pending_metrics(accumulator: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(accumulator).items()}


def _nonfinite_stop(setup: Setup, run: _Run) -> str:
    """Under `train.on_nonfinite=stop`, at a log/eval/checkpoint boundary: why to stop, if so."""
    loss_scaling = setup.config.train.precision == "float16"
    names = guarded_names(metric_names(run.accumulator), loss_scaling, run.described)
    return nonfinite.stop_message(jax.device_get(run.accumulator), names)


def _final_state(setup: Setup, state: TrainState) -> tuple[TrainState, str, int | None]:
    """The state the run ends with: a callback may replace it (early stopping's best). Also the
    name of the (last) callback that did, or "", and the step of its state: the callback's
    `final_state_step` attribute when it sets one (the loop's step it kept the state at), else
    the state's own step counter."""
    replaced_by, replaced_step = "", None
    for name, callback in zip(setup.config.callbacks.keys(), setup.callbacks):
        candidate = callback.final_state(state)
        if candidate is not state:
            state, replaced_by = jax.device_put(candidate, setup.state_sharding), name
            replaced_step = getattr(callback, "final_state_step", None)
            replaced_step = int(state.step) if replaced_step is None else int(replaced_step)
    return state, replaced_by, replaced_step


# Finish --------------------------------------------------------------------------------------


# The keys `_finish` writes besides `summarize`'s; no `LoggedState` metric may take one.
_SUMMARY_KEYS = frozenset({
    "final", "best", "best_metric", "steps", "num_steps", "resumed_from_step", "stopped_early",
    "stop_reason", "preempted_by", "stop_step", "skipped_steps", "wall_time_s", "steps_per_sec",
    "checkpoint", "final_state_step", "final_state_eval", "final_state_restored_by"})


def _check_logged_names(opt_state: Any) -> None:
    """Before anything runs: `LoggedState` names are unique and leave summary.json's alone."""
    clashes = sorted(logged_metrics(opt_state).keys() & _SUMMARY_KEYS)
    if clashes:
        raise ConfigError(f"A LoggedState in the optimizer state reports {clashes}, keys that "
                          "summary.json already has; give its metrics other names.")


def _finish(loop: _Loop, run: _Run, workdir: Path, wall_time: float,
            last_checkpoint: int | None) -> dict[str, Any]:
    """summary.json, the one file to read after a run: how far and fast it went, why it
    stopped, its final and best eval metrics, the final state's `LoggedState` metrics and
    where its last checkpoint is; callbacks add to it. Then the summary line."""
    train_cfg = loop.setup.config.train
    records = read_metrics(workdir / "metrics.jsonl") if is_main_process() else []
    summary = summarize(records, train_cfg.best_metric, train_cfg.best_mode)
    # The last checkpoint holds the last state, or the one a callback put in its place, or,
    # after a non-finite step, the last good state, saved before.
    final_state_step = (last_checkpoint if last_checkpoint != run.step
                        else run.final_state_step if run.final_state_by else run.step)
    summary.update({
        "steps": run.step, "num_steps": loop.setup.num_steps,
        "resumed_from_step": run.start_step,
        "stopped_early": bool(run.stop_reason), "stop_reason": run.stop_reason,
        "preempted_by": run.preempted_by,
        "stop_step": run.step if run.stop_reason else None,
        "skipped_steps": int(run.state.skipped_steps),
        "wall_time_s": round(wall_time, 3),
        # Steps of this invocation over its wall time: setup, compiles and evaluations included.
        "steps_per_sec": round((run.step - run.start_step) / wall_time, 3),
        "checkpoint": (str(absolute(workdir / "checkpoints" / str(last_checkpoint)))
                       if last_checkpoint is not None else None),
        "final_state_step": final_state_step,
        "final_state_eval": eval_record(records, final_state_step),
        "final_state_restored_by": run.final_state_by or None,
    })
    summary.update({name: float(value)
                    for name, value in logged_metrics(run.state.opt_state).items()})
    for callback in loop.setup.callbacks:
        callback.on_end(summary, run.state)
    if is_main_process():
        write_json(workdir / "summary.json", summary)
        loop.progress.message(_summary_line(summary))
    return summary


def _summary_line(summary: dict[str, Any]) -> str:
    """What a run ends with: how far and fast it went, its final and best metrics, where it is."""
    def metrics(record: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step") or "none"

    best = summary["best"]
    best_text = (f"{summary['best_metric']} {best[summary['best_metric']]:.4f} at step "
                 f"{best['step']}" if best else f"no {summary['best_metric']} logged")
    resumed = summary["resumed_from_step"]
    resumed_text = f" (resumed from step {resumed})" if resumed else ""
    final, checkpoint = f"final: {metrics(summary['final'])}", summary["checkpoint"]
    restored_by = summary.get("final_state_restored_by")
    if restored_by:  # The checkpoint holds an earlier state than the last evaluated one.
        held = summary.get("final_state_eval") or {}
        final = (f"last eval (step {summary['final'].get('step')}): "
                 f"{metrics(summary['final'])}")
        checkpoint += (f" holds the step-{summary['final_state_step']} state "
                       f"({metrics(held) if held else 'not evaluated'}), restored by "
                       f"{restored_by}")
    return (f"Done: {summary['steps']} steps{resumed_text} in {summary['wall_time_s']:.1f}s, "
            f"{summary['steps_per_sec']:.1f} steps/s\n"
            f"  {final}\n"
            f"  best:  {best_text}\n"
            f"  checkpoint: {checkpoint}")


def restore(workdir: str | Path, step: int | None = None
            ) -> tuple[Setup, TrainState, int]:
    """Rebuild a workdir's plugins from its config.json and restore a checkpoint's state (the
    latest, or `step`). A workdir without that checkpoint fails before anything is built or
    created in it."""
    workdir = Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.exists():
        raise JaxforgeError(f"{workdir} has no config.json: it is not a jaxforge workdir.")
    saved = saved_steps(workdir / "checkpoints")
    if not saved:
        raise JaxforgeError(f"{workdir} holds no checkpoint; train first.")
    if step is not None and step not in saved:
        raise JaxforgeError(f"{workdir} has no step-{step} checkpoint; it has steps "
                            f"{', '.join(map(str, saved))}.")
    step = saved[-1] if step is None else step
    setup = set_up(config_lib.from_json_file(config_file))
    checkpointer = Checkpointer(workdir / "checkpoints", setup.config.checkpoint.max_to_keep,
                                async_save=False)
    try:
        state, _, _ = checkpointer.restore(step, _abstract_state(setup))
    finally:
        checkpointer.close()
    return setup, state, step


def evaluate(workdir: str | Path, step: int | None = None) -> dict[str, Any]:
    """Evaluate a workdir's latest (or given) checkpoint on the whole eval split."""
    setup, state, step = restore(workdir, step)
    return {"step": step, **_evaluate(setup, _jit_eval_step(setup), state)}
