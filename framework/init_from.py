"""`config.init_from`: start a new run from another run's (or a weights file's) parameters.

A run that starts (no checkpoint of its own) and names `init_from.path` begins from the source's
parameters and mutable model collections (batch statistics) instead of the seed's; a run that
resumes from its own checkpoint ignores `init_from` (resume wins). In two phases, so that bad
input fails before the workdir records anything:

    prepare(setup)         find the source and its step, read what it holds (shapes only, for a
                           checkpoint), and decide what goes where (`Plan`); raises ConfigError
    apply(setup, prepared) the initial state: the seed's, with the planned arrays restored from
                           the source straight onto this run's shardings; init_from.json

Names are `COLLECTION/PATH`, e.g. `params/Dense_0/kernel` or `batch_stats/BatchNorm_0/mean`:
the collection, then the path parameters.txt prints (`framework.path_text`). `include`,
`exclude` and `rename` act on the PATH (the collection is kept), in that order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from framework import kinds
from framework.checkpoint import saved_steps
from framework.errors import ConfigError, JaxforgeError
from framework.sharding import path_text
from framework.weights import SUFFIX, flat_collections, load_weights
from framework.workdir import absolute

MISMATCH_MODES = ("error", "reinit")
REPORT_FILE = "init_from.json"


# The source ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """What `init_from.path` names: a checkpoint (of a workdir, at a step) or a weights file."""

    kind: str  # "checkpoint" | "weights"
    path: epath.Path  # The checkpoint's step directory, or the weights file.
    workdir: epath.Path | None = None  # The run a checkpoint belongs to.
    step: int | None = None  # The checkpoint's step.

    def describe(self) -> str:
        return (f"the step-{self.step} checkpoint of {self.workdir}" if self.kind == "checkpoint"
                else f"the weights file {self.path}")


def find_source(path: str | epath.Path, step: int | None = None,
                key: str = "init_from.path") -> Source:
    """The checkpoint or weights file `path` names: a workdir (its latest checkpoint, or
    `step`), a checkpoint directory (`WORKDIR/checkpoints/N`) or a `.safetensors` file."""
    path = epath.Path(path)
    where = f"config.{key}={str(path)!r}" if key else str(path)
    step_flag = "config.init_from.step" if key else "--step"
    if not path.exists():
        raise ConfigError(f"{where} does not exist.")
    if path.is_file():
        if path.suffix != SUFFIX:
            raise ConfigError(f"{where} is a file but not a {SUFFIX} weights file; give a "
                              "workdir, a checkpoint directory (WORKDIR/checkpoints/N) or a "
                              f"{SUFFIX} file.")
        if step is not None:
            raise ConfigError(f"{step_flag}={step}: a weights file holds one set of "
                              "weights; leave step unset.")
        return Source("weights", path)
    if path.name.isdigit() and (path / "state").is_dir():  # WORKDIR/checkpoints/N
        if step is not None and step != int(path.name):
            raise ConfigError(f"{step_flag}={step} but {where} is the step-"
                              f"{path.name} checkpoint; leave step unset or give the workdir.")
        return Source("checkpoint", path, path.parent.parent, int(path.name))
    workdir = path.parent if path.name == "checkpoints" and saved_steps(path) else path
    saved = saved_steps(workdir / "checkpoints")
    if not saved:
        raise ConfigError(f"{where} holds no checkpoint: give a workdir with checkpoints, a "
                          f"checkpoint directory (WORKDIR/checkpoints/N) or a {SUFFIX} file.")
    if step is None:
        step = saved[-1]
    elif step not in saved:
        raise ConfigError(f"{step_flag}={step} was not saved in {workdir}; saved steps: "
                          f"{saved}.")
    return Source("checkpoint", workdir / "checkpoints" / str(step), workdir, step)


def _state_metadata(source: Source) -> dict[str, Any]:
    """The saved train state's tree of array metadata (shapes, dtypes), read without loading."""
    import orbax.checkpoint as ocp

    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(absolute(source.path / "state"))
        return dict(getattr(metadata, "item_metadata", metadata).tree)
    except Exception as error:
        raise JaxforgeError(f"Cannot read {source.describe()} ({type(error).__name__}: "
                            f"{error}).") from None


def _collections(metadata: dict[str, Any], use_ema: bool, source: Source) -> dict[str, Any]:
    """`{"params": tree, "batch_stats": tree, ...}` of a saved state (EMA params with use_ema)."""
    if use_ema:
        if not metadata.get("ema_params"):
            raise ConfigError(f"EMA parameters asked for (init_from.use_ema, --ema) but "
                              f"{source.describe()} has none (its run had train.ema_decay=0).")
        params = metadata["ema_params"]
    else:
        params = metadata["params"]
    return {"params": params, **(metadata.get("model_state") or {})}


def _by_name(collections: dict[str, Any]) -> dict[str, Any]:
    """`COLLECTION/PATH -> leaf` of `{"params": tree, "batch_stats": tree, ...}`."""
    others = {c: tree for c, tree in collections.items() if c != "params"}
    return flat_collections(collections["params"], others)


def _restore(source: Source, tree: dict[str, Any]) -> dict[str, Any]:
    """Restore the arrays of `tree` (a subtree of the saved state, of ShapeDtypeStructs with
    shardings) and nothing else."""
    import orbax.checkpoint as ocp

    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            # Absolute: Orbax reads a relative path's metadata as None (0.12).
            return checkpointer.restore(
                absolute(source.path / "state"), args=ocp.args.PyTreeRestore(
                item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
                partial_restore=True))
    except Exception as error:
        raise JaxforgeError(f"Cannot restore {source.describe()} ({type(error).__name__}: "
                            f"{error}).") from None


def _subtree(tree: Any, prefix: str, wanted: dict[str, Any]) -> Any:
    """The part of a metadata tree whose leaves `wanted` names (by `prefix/path`), with the
    wanted stand-ins as leaves; None where nothing is wanted."""
    if isinstance(tree, dict):
        kept = {k: _subtree(v, f"{prefix}/{k}" if prefix else str(k), wanted)
                for k, v in tree.items()}
        kept = {k: v for k, v in kept.items() if v is not None}
        return kept or None
    return wanted.get(prefix)


def read_checkpoint(source: Source, use_ema: bool, wanted: dict[str, Any] | None,
                    shardings: Any = None) -> dict[str, jax.Array]:
    """The arrays of a checkpoint's parameters and model collections by `COLLECTION/PATH`:
    those `wanted` names (name -> ShapeDtypeStruct with the sharding to restore onto), or all,
    on one device."""
    collections = _collections(_state_metadata(source), use_ema, source)
    if wanted is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        wanted = {name: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
                  for name, m in _by_name(collections).items()}
    saved = {"ema_params" if (c == "params" and use_ema) else c: tree
             for c, tree in collections.items()}
    target = {}
    for collection, tree in saved.items():
        name = "params" if collection == "ema_params" else collection
        part = _subtree(tree, name, wanted)
        if part is not None:
            if collection in ("params", "ema_params"):
                target[collection] = part
            else:
                target.setdefault("model_state", {})[collection] = part
    if not target:
        return {}
    restored = _restore(source, target)
    flat = flat_collections(restored.get("ema_params" if use_ema else "params", {}),
                            restored.get("model_state"))
    return {name: flat[name] for name in wanted}


# The plan ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What goes where, by `COLLECTION/PATH`."""

    loaded: dict[str, str]  # Target name -> the source name it is loaded from.
    renamed: dict[str, str]  # Source name -> target name, where `rename` changed it.
    reinitialised: dict[str, str]  # Target name -> why it keeps its fresh initialisation.
    ignored: dict[str, str]  # Source name -> why it is not used.


def _shape(shape: Any) -> str:
    return str(tuple(shape))


def make_plan(source: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]],
              cfg: ml_collections.ConfigDict, what: str = "the source") -> Plan:
    """Match the source's arrays to this model's (shapes by name): include, exclude, rename,
    then `on_mismatch`. Raises ConfigError for an include that matches nothing and, under
    `on_mismatch=error`, for every parameter missing on either side or of another shape."""
    include = [re.compile(p) for p in cfg.include]
    exclude = [re.compile(p) for p in cfg.exclude]
    rename = [(re.compile(p), r) for p, r in cfg.rename]
    paths = {name: name.partition("/")[2] for name in source}
    _check_includes(include, list(paths.values()), what)
    plan = Plan({}, {}, {}, {})
    filtered: set[str] = set()  # Names whose source was left out on purpose.
    problems: list[str] = []
    for name, path in paths.items():
        reason = _left_out(path, include, exclude)
        if reason:
            plan.ignored[name] = reason
            filtered.add(name)
            continue
        new_path = path
        for regex, replacement in rename:
            new_path = regex.sub(replacement, new_path)
        problems += _match(plan, name, f"{name.partition('/')[0]}/{new_path}", source, target,
                           what)
    problems += _unmatched_targets(plan, target, filtered, what)
    _check_problems(plan, problems, cfg.on_mismatch, what)
    return plan


def _check_includes(include: list[re.Pattern], paths: list[str], what: str) -> None:
    for regex in include:
        if not any(regex.search(p) for p in paths):
            shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
            raise ConfigError(f"config.init_from.include entry {regex.pattern!r} matches no "
                              f"parameter of {what} (its paths: {shown}).")


def _left_out(path: str, include: list[re.Pattern], exclude: list[re.Pattern]) -> str:
    """Why a source array is left out by include/exclude, or "" when it is taken."""
    if include and not any(r.search(path) for r in include):
        return "not included"
    if any(r.search(path) for r in exclude):
        return "excluded"
    return ""


def _match(plan: Plan, name: str, new_name: str, source: dict[str, tuple[int, ...]],
           target: dict[str, tuple[int, ...]], what: str) -> list[str]:
    """Record one taken source array (`name`, renamed `new_name`) in `plan`; its problems."""
    renamed = new_name != name
    if renamed:
        plan.renamed[name] = new_name
    if new_name not in target:
        plan.ignored[name] = "not in this model" + (f" (as {new_name})" if renamed else "")
        return [f"{name}: in {what}" + (f" (renamed {new_name})" if renamed else "")
                + ", not in this model"]
    if new_name in plan.loaded:
        raise ConfigError(f"config.init_from.rename maps both {plan.loaded[new_name]} and "
                          f"{name} to {new_name}.")
    if tuple(source[name]) != tuple(target[new_name]):
        here, there = _shape(target[new_name]), _shape(source[name])
        plan.reinitialised[new_name] = f"shape {there} in {what}, {here} here"
        plan.ignored[name] = "another shape"
        return [f"{new_name}: shape {there} in {what}" + (f" (as {name})" if renamed else "")
                + f", {here} here"]
    plan.loaded[new_name] = name
    return []


def _unmatched_targets(plan: Plan, target: dict[str, tuple[int, ...]], filtered: set[str],
                       what: str) -> list[str]:
    """This model's arrays nothing was loaded into keep their fresh initialisation; those not
    left out on purpose are problems."""
    problems = []
    for name in target:
        if name in plan.loaded or name in plan.reinitialised:
            continue
        if name in filtered:
            plan.reinitialised[name] = "its source was not included or excluded"
        else:
            plan.reinitialised[name] = f"not in {what}"
            problems.append(f"{name}: in this model, not in {what}")
    return problems


def _check_problems(plan: Plan, problems: list[str], on_mismatch: str, what: str) -> None:
    if problems and on_mismatch == "error":
        raise ConfigError(
            f"config.init_from: {len(problems)} parameter(s) do not match {what} "
            "(on_mismatch=error):\n  " + "\n  ".join(problems) + "\nSelect with "
            "init_from.include/exclude/rename, or set init_from.on_mismatch=reinit to keep "
            "those parameters' fresh initialisation.")
    if not plan.loaded:
        raise ConfigError(f"config.init_from: no parameter of {what} fits this model; nothing "
                          "would be loaded.")


# Prepare and apply ---------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """A source found and read, and the plan: what `apply` needs, with no array placed yet."""

    source: Source
    plan: Plan
    tensors: dict[str, np.ndarray] | None = None  # A weights file's arrays (on the host).
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    opt_metadata: Any = None  # A checkpoint's optimizer-state metadata (optimizer_state=true).


def _target_shapes(setup: Any) -> tuple[Any, dict[str, tuple[int, ...]]]:
    abstract = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
    flat = flat_collections(abstract.params, abstract.model_state)
    return abstract, {name: tuple(leaf.shape) for name, leaf in flat.items()}


def convert(setup: Any, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A weights file's tensors through the model plugin's `convert_weights`."""
    from framework.registry import registry

    name = setup.config.model.name
    converter = getattr(registry.load(kinds.MODELS, name), "convert_weights", None)
    if converter is None:
        raise ConfigError(f"config.init_from.convert=true but the model plugin {name!r} has no "
                          "convert_weights.")
    converted = converter(dict(tensors))
    if not isinstance(converted, dict):
        raise JaxforgeError(f"The model plugin {name!r}'s convert_weights returned a "
                            f"{type(converted).__name__}, not a dict of name -> array.")
    return {key: np.asarray(value) for key, value in converted.items()}


def prepare(setup: Any) -> Prepared | None:
    """Find and check the source of `config.init_from` and plan the load; None when
    `init_from.path` is empty. Every bad input is a ConfigError/JaxforgeError here, before
    anything is written or trained."""
    cfg = setup.config.init_from
    if not cfg.path:
        return None
    source = find_source(cfg.path, cfg.step)
    abstract, target = _target_shapes(setup)
    if source.kind == "weights":
        tensors, metadata = load_weights(source.path)
        if cfg.convert:
            tensors = convert(setup, tensors)
        shapes = {name: tuple(array.shape) for name, array in tensors.items()}
        plan = make_plan(shapes, target, cfg, "the weights file")
        return Prepared(source, plan, tensors=tensors, metadata=metadata)
    saved = _state_metadata(source)
    collections = _collections(saved, cfg.use_ema, source)
    shapes = {name: tuple(m.shape) for name, m in _by_name(collections).items()}
    plan = make_plan(shapes, target, cfg)
    prepared = Prepared(source, plan)
    if cfg.optimizer_state:
        prepared.opt_metadata = saved.get("opt_state")
        _check_same_optimizer(prepared.opt_metadata, abstract.opt_state)
    return prepared


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {path_text(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_same_optimizer(saved: Any, abstract: Any) -> None:
    mine, theirs = _leaf_shapes(abstract), _leaf_shapes(saved)
    if mine == theirs:
        return
    lines = [f"{n}: {_shape(theirs[n]) if n in theirs else 'absent'} in the source, "
             f"{_shape(mine[n]) if n in mine else 'absent'} here"
             for n in sorted(set(mine) | set(theirs)) if mine.get(n) != theirs.get(n)]
    raise ConfigError("config.init_from.optimizer_state=true but the source's optimizer state "
                      f"does not have this run's structure ({len(lines)} difference(s)):\n  "
                      + "\n  ".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "")
                      + "\nUse the same optimizer and regularizers, or leave "
                        "optimizer_state=false (a fresh optimizer state).")


def _place(array: np.ndarray, like: jax.Array) -> jax.Array:
    """A host array placed with `like`'s sharding and dtype (each process its own shards)."""
    array = np.asarray(array, dtype=like.dtype)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda index: array[index])


def apply(setup: Any, prepared: Prepared | None, workdir: epath.Path | None = None) -> Any:
    """The run's initial state: the seed's, with what `prepared` planned loaded from the source
    onto this run's shardings; a fresh optimizer state for the new parameters (or the source's,
    with optimizer_state=true) and EMA parameters equal to them. Reports what happened."""
    state = setup.init_state(jax.random.PRNGKey(setup.config.seed))
    if prepared is None:
        return state
    workdir = epath.Path(workdir) if workdir is not None else None
    cfg, plan = setup.config.init_from, prepared.plan
    current = flat_collections(state.params, state.model_state)
    if prepared.tensors is not None:
        arrays = {target: _place(prepared.tensors[name], current[target])
                  for target, name in plan.loaded.items()}
    else:
        wanted = {name: jax.ShapeDtypeStruct(current[target].shape, current[target].dtype,
                                             sharding=current[target].sharding)
                  for target, name in plan.loaded.items()}
        restored = read_checkpoint(prepared.source, cfg.use_ema, wanted)
        arrays = {target: restored[name] for target, name in plan.loaded.items()}
    current.update(arrays)

    def pick(collection: str) -> Any:
        return lambda path, leaf: current[f"{collection}/{path_text(path)}"]

    params = jax.tree_util.tree_map_with_path(pick("params"), state.params)
    model_state = {c: jax.tree_util.tree_map_with_path(pick(c), tree)
                   for c, tree in state.model_state.items()}
    shardings = setup.state_sharding
    if cfg.optimizer_state:
        opt_state = _restore_optimizer(prepared, state.opt_state, shardings.opt_state)
    else:
        opt_state = jax.jit(setup.tx.init, out_shardings=shardings.opt_state)(params)
    ema = (None if state.ema_params is None else
           jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.ema_params)(params))
    state = state.replace(params=params, model_state=model_state, opt_state=opt_state,
                          ema_params=ema)
    report(setup, prepared, workdir)
    return state


def _restore_optimizer(prepared: Prepared, opt_state: Any, shardings: Any) -> Any:
    wanted = {path_text(p): jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s)
              for (p, leaf), s in zip(jax.tree_util.tree_flatten_with_path(opt_state)[0],
                                      jax.tree.leaves(shardings))}
    saved = jax.tree_util.tree_map_with_path(lambda p, m: wanted[path_text(p)],
                                             prepared.opt_metadata)
    restored = _restore(prepared.source, {"opt_state": saved})["opt_state"]
    by_name = {path_text(p): leaf
               for p, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}
    return jax.tree_util.tree_map_with_path(lambda p, leaf: by_name[path_text(p)], opt_state)


def initial_state(setup: Any, workdir: epath.Path | None = None) -> Any:
    """The initial state of a run that starts (does not resume) with `setup.config`:
    `prepare`, then `apply`."""
    return apply(setup, prepare(setup), workdir)


# The report ----------------------------------------------------------------------------------


def report_dict(setup: Any, prepared: Prepared) -> dict[str, Any]:
    cfg, plan, source = setup.config.init_from, prepared.plan, prepared.source
    return {
        "source": str(absolute(source.path)), "kind": source.kind, "step": source.step,
        "use_ema": bool(cfg.use_ema), "optimizer_state": bool(cfg.optimizer_state),
        "converted": bool(cfg.convert and source.kind == "weights"),
        "weights_metadata": prepared.metadata,
        "loaded": dict(sorted(plan.loaded.items())),
        "renamed": dict(sorted(plan.renamed.items())),
        "reinitialised": dict(sorted(plan.reinitialised.items())),
        "ignored": dict(sorted(plan.ignored.items())),
    }


def report_text(setup: Any, prepared: Prepared, workdir: epath.Path | None) -> str:
    cfg, plan = setup.config.init_from, prepared.plan
    what = prepared.source.describe() + (" (EMA parameters)" if cfg.use_ema else "")
    lines = [f"Initialised from {what}: {len(plan.loaded)} array(s) loaded, {len(plan.renamed)} "
             f"renamed, {len(plan.reinitialised)} reinitialised, {len(plan.ignored)} ignored; "
             f"optimizer state {'from the source' if cfg.optimizer_state else 'fresh'}."
             + (f" Details: {workdir / REPORT_FILE}." if workdir is not None else "")]
    for title, entries in (("renamed", {k: f"-> {v}" for k, v in plan.renamed.items()}),
                           ("reinitialised", plan.reinitialised), ("ignored", plan.ignored)):
        items = sorted(entries.items())
        for name, why in items[:20]:
            lines.append(f"  {title}: {name} ({why})" if title != "renamed"
                         else f"  renamed: {name} {why}")
        if len(items) > 20:
            lines.append(f"  ... and {len(items) - 20} more {title}")
    return "\n".join(lines)


def report(setup: Any, prepared: Prepared, workdir: epath.Path | None) -> None:
    """Print what was loaded, renamed, reinitialised and ignored; write WORKDIR/init_from.json
    (process 0)."""
    if jax.process_index() != 0:
        return
    print(report_text(setup, prepared, workdir))
    if workdir is not None:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / REPORT_FILE).write_text(
            json.dumps(report_dict(setup, prepared), indent=2) + "\n")
