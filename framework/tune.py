"""`jaxforge tune`: a hyperparameter search on Optuna, with pruning, over any number of workers.

    jaxforge tune --config experiments/x.py --workdir runs/search --trials 20 \\
        --search.optimizer.learning_rate=loguniform:1e-4:1e-2 [--config.a.b=v ...]

Each trial is an ordinary run in `DIR/trial-<n>`, trained in this process one after another.
Its evaluations are reported to Optuna; when the pruner says so, the run stops at that
evaluation with its checkpoint, and summary.json's `stop_reason` says it was pruned.

The study lives in an Optuna storage (`DIR/study.db`, SQLite, unless `--storage` names a
database): the same command started on several machines (or several times on one) makes
workers of one study. A worker starts a trial only while fewer than `--trials` are finished,
running or queued, and a trial asked for past that budget (two workers asking at once) is
closed unrun, so the study ends at `--trials`. Each worker's trial sends Optuna heartbeats; a
trial whose worker stopped beating (killed, preempted, crashed) is failed by the next worker
that looks, retried as a new trial with the same parameters, and that retry resumes the run
from the interrupted trial's last checkpoint (its workdir is renamed to the retry's number).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from framework import config as config_lib
from framework import search_space, tune_report
from framework.errors import ConfigError, JaxforgeError
from framework.metrics import read_metrics, summarize
from framework.plugin import Callback

PRUNED = "pruned by Optuna"  # How a pruned trial's summary.json `stop_reason` begins.
INSTALL = 'pip install -e ".[tune]"'
POLL_S = 1.0  # How often a worker with no trial to start looks at the study again.
MAX_RETRIES = 3  # Retries of one interrupted trial before it stays failed.


def import_optuna() -> Any:
    """Optuna, or a one-line error that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise JaxforgeError(f"jaxforge tune needs Optuna, an optional dependency: {INSTALL} "
                            "(or pip install optuna).") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Failed trials: raised, or reported.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `jaxforge tune` besides the config and the search space."""

    trials: int = 20
    metric: str | None = None  # Default: the config's train.best_metric.
    mode: str | None = None  # Default: the config's train.best_mode.
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup_trials: int = 5
    seed: int = 0
    storage: str | None = None  # Default: sqlite in the workdir.
    study: str | None = None  # Default: the workdir's name.
    heartbeat: int = 30


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated study: what each trial resolves its config from, and where it goes."""

    user: ml_collections.ConfigDict
    fixed: dict[str, str]
    params: list[search_space.Param]
    workdir: Path
    options: Options
    metric: str
    mode: str
    budget: int  # --trials, or the grid's size when that is smaller.


def storage_url(workdir: str | Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(workdir) / 'study.db').absolute()}"


def study_name(workdir: str | Path, name: str | None) -> str:
    return name or Path(workdir).absolute().name


def plan(spec: str, workdir: str | Path, specs: dict[str, str], overrides: Sequence[str],
         options: Options) -> Plan:
    """Parse and check everything before the first trial; raises ConfigError."""
    _check_options(options)
    params = search_space.parse(specs)
    fixed = config_lib.parse_override_keys(overrides)
    user = config_lib.load_experiment(spec)
    search_space.check(params, user, fixed)
    base = config_lib.resolve_config(user, {**fixed, **{p.key: p.ends()[0] for p in params}})
    metric = options.metric or base.train.best_metric
    mode = options.mode or base.train.best_mode
    if not metric.startswith("eval/"):
        raise ConfigError(f"--metric {metric}: trials are compared on an evaluation metric "
                          "(eval/NAME, e.g. eval/accuracy).")
    budget = options.trials
    if options.sampler == "grid":
        budget = min(budget, _grid_size(params))
    return Plan(user, fixed, params, Path(workdir), options, metric, mode, budget)


def _check_options(options: Options) -> None:
    if options.trials < 1:
        raise ConfigError(f"--trials {options.trials}: give a positive number of trials.")
    if options.mode not in (None, "min", "max"):
        raise ConfigError(f"--mode {options.mode}: give max or min.")
    if options.heartbeat < 1 or options.pruner_startup_trials < 0:
        raise ConfigError("--heartbeat must be at least 1 second and --pruner_startup_trials "
                          "at least 0.")


def _grid_size(params: Sequence[search_space.Param]) -> int:
    size = 1
    for param in params:
        values = param.grid()
        if values is None:
            raise ConfigError(f"--sampler grid needs values to list: --search.{param.key}="
                              f"{param.spec} is a float range; write choice:A,B,... instead.")
        size *= len(values)
    return size


def open_storage(url: str, heartbeat: int, attempts: int = 3) -> Any:
    """An Optuna database storage whose trials send heartbeats, and whose interrupted trials
    (no heartbeat for 4 intervals) are retried with the same parameters. Workers that start
    together race to create the tables: the loser tries again."""
    optuna = import_optuna()
    from sqlalchemy.exc import DBAPIError

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=MAX_RETRIES, inherit_intermediate_values=True)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=4 * heartbeat,
                heartbeat_stale_trial_callback=retry)
        except DBAPIError:
            if attempt + 1 < attempts:
                time.sleep(1.0)
                continue
            error = _first_line(sys.exc_info()[1])
        except Exception as other:  # SQLAlchemy's or Optuna's: a URL it does not take.
            error = _first_line(other)
        raise JaxforgeError(f"--storage: cannot open the Optuna storage {_shown(url)} ({error})."
                            " Give a database URL: sqlite:///PATH, "
                            "postgresql://USER@HOST:PORT/DB, mysql://...")


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def make_sampler(name: str, params: Sequence[search_space.Param], seed: int | None) -> Any:
    samplers = import_optuna().samplers
    if name == "grid":
        return samplers.GridSampler({p.key: p.grid() for p in params}, seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    return samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name: str, startup_trials: int) -> Any:
    pruners = import_optuna().pruners
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "asha":
        return pruners.SuccessiveHalvingPruner()
    return pruners.NopPruner()


def open_study(plan: Plan) -> Any:
    """Create the study, or join it; a study started with another search is refused."""
    optuna = import_optuna()
    options = plan.options
    name = study_name(plan.workdir, options.study)
    study = optuna.create_study(
        study_name=name, storage=open_storage(storage_url(plan.workdir, options.storage),
                                              options.heartbeat),
        direction="maximize" if plan.mode == "max" else "minimize",
        pruner=make_pruner(options.pruner, options.pruner_startup_trials),
        load_if_exists=True)
    recorded = {"metric": plan.metric, "mode": plan.mode,
                "search": {p.key: p.spec for p in plan.params}, "config": plan.fixed}
    earlier = study.user_attrs.get("jaxforge")
    if earlier is None:
        study.set_user_attr("jaxforge", recorded)
        study.set_metric_names([plan.metric])
    elif earlier != recorded:
        raise ConfigError(f"Study {name!r} in this storage searches {earlier}; this command "
                          f"searches {recorded}. Give another --study name or --workdir.")
    return study


class TrialReporter(Callback):
    """Reports each evaluation of `metric` to an Optuna trial; stops the run when pruned (not
    at its last step: a finished run is a complete trial)."""

    def __init__(self, trial: Any, metric: str, last_step: int) -> None:
        self.trial, self.metric, self.last_step = trial, metric, last_step

    def on_eval(self, step: int, metrics: dict[str, float], state: Any) -> None:
        if self.metric not in metrics:
            raise ConfigError(f"--metric {self.metric}: the evaluations report "
                              f"{', '.join(sorted(metrics))}.")
        value = metrics[self.metric]
        self.trial.report(value, step)
        if step < self.last_step and self.trial.should_prune():
            self.stop_training = True
            self.stop_reason = f"{PRUNED} at step {step} ({self.metric} {value:.4g})"


class Interrupted(Exception):
    """A trial's run stopped by SIGTERM or Ctrl-C: checkpointed, its retry queued."""


class SurplusTrial(Exception):
    """A trial asked for when the budget was already taken; closed (FAIL) without running."""


_COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


def _counted(study: Any) -> list[Any]:
    states = tuple(import_optuna().trial.TrialState[s] for s in _COUNTED)
    return study.get_trials(deepcopy=False, states=states)


@dataclasses.dataclass
class Objective:
    """One trial: sample, resolve, train in `DIR/trial-<n>` (resuming an interrupted one)."""

    plan: Plan
    study: Any
    echo: Callable[[str], None] = print

    def __call__(self, trial: Any) -> float:
        earlier = [t for t in _counted(self.study) if t.number < trial.number]
        if len(earlier) >= self.plan.budget:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"{len(earlier)} trials already take the budget of "
                               f"{self.plan.budget}")
        values = {p.key: p.suggest(trial) for p in self.plan.params}
        texts = {p.key: p.override(values[p.key]) for p in self.plan.params}
        try:
            config = config_lib.resolve_config(self.plan.user, {**self.plan.fixed, **texts})
        except ConfigError as error:
            raise ConfigError(f"Trial {trial.number} ({_describe(texts)}): {error}") from None
        workdir = self._workdir(trial)
        trial.set_user_attr("workdir", workdir.name)
        self.echo(f"Trial {trial.number}: {_describe(texts)} in {workdir}")
        from framework import loop

        try:
            reporter = TrialReporter(trial, self.plan.metric, _last_step(config))
            summary = loop.train(config, workdir, callbacks=[reporter])
        except KeyboardInterrupt:
            summary = {"preempted_by": "Ctrl-C"}
        if summary.get("preempted_by"):
            self._queue_retry(trial)
            raise Interrupted(f"Trial {trial.number} was stopped by {summary['preempted_by']}; "
                              "run the same command again to resume it from its checkpoint.")
        return self._result(trial, summary, workdir)

    def _frozen(self, trial: Any) -> Any:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)

    def _queue_retry(self, trial: Any) -> None:
        """What Optuna does for a trial without heartbeats: a new trial with its parameters."""
        retry = import_optuna().storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRIES, inherit_intermediate_values=True)
        retry(self.study, self._frozen(trial))

    def _workdir(self, trial: Any) -> Path:
        """`DIR/trial-<n>`; a retry takes over the interrupted trial's workdir, to resume it."""
        path = self.plan.workdir / f"trial-{trial.number}"
        history = self._frozen(trial).system_attrs.get("retry_history", [])
        previous = self.plan.workdir / f"trial-{history[-1]}" if history else None
        if previous is not None and previous.exists() and not path.exists():
            previous.rename(path)
            self.echo(f"Trial {trial.number} retries the interrupted trial {history[-1]}: "
                      f"its workdir is now {path}.")
        return path

    def _result(self, trial: Any, summary: dict[str, Any], workdir: Path) -> float:
        """The best evaluation of the metric and its step; a pruned run raises TrialPruned."""
        best = summarize(read_metrics(workdir / "metrics.jsonl"), self.plan.metric,
                         self.plan.mode)["best"]
        trial.set_user_attr("best_step", best.get("step"))
        trial.set_user_attr("steps", summary.get("steps"))
        if (summary.get("stop_reason") or "").startswith(PRUNED):
            raise import_optuna().TrialPruned(summary["stop_reason"])
        return best.get(self.plan.metric, float("nan"))


def _last_step(config: ml_collections.ConfigDict) -> int:
    given = config.train.num_steps is not None
    return config_lib.num_steps(config, None if given else config_lib.train_examples(config))


def _describe(texts: dict[str, str]) -> str:
    return ", ".join(f"{key}={text}" for key, text in texts.items())


def work(study: Any, plan: Plan, echo: Callable[[str], None] = print) -> None:
    """Run trials until `plan.budget` are finished (complete or pruned), waiting for the other
    workers' trials to finish (or to be found interrupted, and retried)."""
    optuna = import_optuna()
    objective, waited = Objective(plan, study, echo), False
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        finished = states.count("COMPLETE") + states.count("PRUNED")
        if finished >= plan.budget:
            return
        if "WAITING" not in states and finished + states.count("RUNNING") >= plan.budget:
            if not waited:
                echo(f"{finished} of {plan.budget} trials finished; waiting for the running "
                     "ones (an interrupted one is retried once its heartbeat is "
                     f"{4 * plan.options.heartbeat}s old).")
            waited = True
            time.sleep(POLL_S)
            continue
        study.sampler = make_sampler(plan.options.sampler, plan.params,
                                     _sampler_seed(plan.options, len(trials)))
        _run_one(study, objective)


def _sampler_seed(options: Options, trials: int) -> int:
    """Seeds differ per trial, so that workers asking at once rarely sample the same values,
    and one worker's study repeats; the grid sampler's seed orders its grid, and so is the
    same for every trial and worker (its trial n takes the n-th point)."""
    return options.seed if options.sampler == "grid" else options.seed + trials


def _run_one(study: Any, objective: Objective) -> None:
    """One trial through `study.optimize`: heartbeats sent, stale trials failed first."""
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))


def run_tune(spec: str, workdir: str | Path, specs: dict[str, str], overrides: Sequence[str],
             options: Options, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Plan (every check before the first trial), join the study, work, then report."""
    import_optuna()
    tune_plan = plan(spec, workdir, specs, overrides, options)
    tune_plan.workdir.mkdir(parents=True, exist_ok=True)
    study = open_study(tune_plan)
    echo(f"Study {study.study_name!r}: {tune_plan.budget} trials, {tune_plan.mode}imise "
         f"{tune_plan.metric}, sampler {options.sampler}, pruner {options.pruner}; storage "
         f"{_shown(storage_url(workdir, options.storage))}.")
    try:
        work(study, tune_plan, echo)
    except Interrupted as error:
        echo(str(error))
        return []
    return tune_report.report(study, workdir, echo)


def _shown(url: str) -> str:
    """A storage URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{tail}"


def report(workdir: str | Path, storage: str | None = None, name: str | None = None,
           echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """`jaxforge tune --workdir DIR --report`: the results so far of the study in DIR's storage."""
    optuna = import_optuna()
    url = storage_url(workdir, storage)
    if storage is None and not (Path(workdir) / "study.db").exists():
        raise JaxforgeError(f"{workdir} holds no study.db: no study ran there with the default "
                            "storage (give --storage URL for another).")
    try:
        study = optuna.load_study(study_name=study_name(workdir, name),
                                  storage=open_storage(url, 30))
    except KeyError:
        raise JaxforgeError(f"No study {study_name(workdir, name)!r} in {_shown(url)}; give "
                            "--study NAME.") from None
    return tune_report.report(study, workdir, echo)
