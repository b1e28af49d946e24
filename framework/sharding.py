"""Where each array of the train state lives on the mesh: rules on parameter paths, then FSDP.

A parameter's partition spec is, in order of precedence:
  1. the first of `config.mesh.rules` whose regex `re.search`es its path (`Dense_0/kernel`, as in
     parameters.txt), e.g. `("Dense_.*/kernel", (None, "model"))`;
  2. the Flax logical-axis annotation (`nn.with_logical_partitioning`) the model gave it,
     mapped to mesh axes by `config.mesh.logical_axis_rules`, e.g. `(("mlp", "model"),)`, or
     when that is empty by the model plugin's own `logical_axis_rules`;
  3. the FSDP default: when the mesh's `fsdp` axis has more than one device, a parameter of at
     least `config.mesh.fsdp_min_size` elements is split along its largest dimension that the
     `fsdp` size divides;
  4. replicated.
Optimizer-state leaves that mirror a parameter (Adam's `mu`/`nu`, momentum) take that parameter's
spec; other state leaves (counts, steps, rng) are replicated or follow the FSDP default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from framework.errors import ConfigError
from framework.mesh import AXES

Rule = tuple[re.Pattern, PartitionSpec]


def path_text(path: Sequence[Any]) -> str:
    """A pytree key path as `Dense_0/kernel`: the one text of a parameter's path, which
    parameters.txt shows, `config.mesh.rules` match and plugins may match (`framework.path_text`).
    """
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def parse_rules(rules: Sequence[Sequence[Any]]) -> list[Rule]:
    """`((regex, spec), ...)` from the config -> compiled rules; any malformed one is an error."""
    parsed = []
    for index, rule in enumerate(rules):
        where = f"config.mesh.rules[{index}]"
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"{where}={rule!r} must be a pair (regex, spec), e.g. "
                              "('Dense_.*/kernel', (None, 'model')).")
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{where}: {pattern!r} is not a valid regex: {error}.") from None
        parsed.append((regex, _partition_spec(spec, where)))
    return parsed


def _partition_spec(spec: Any, where: str) -> PartitionSpec:
    if spec is None or isinstance(spec, str):
        spec = (spec,)
    if not isinstance(spec, (tuple, list)):
        raise ConfigError(f"{where}: the spec {spec!r} must be a tuple with one entry per "
                          f"dimension: a mesh axis ({', '.join(AXES)}), a tuple of axes, or None.")
    entries = []
    for entry in spec:
        axes = tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)
        for axis in axes:
            if axis is not None and axis not in AXES:
                raise ConfigError(f"{where}: {axis!r} is not a mesh axis; use one of "
                                  f"{', '.join(AXES)} or None.")
        entries.append(tuple(entry) if isinstance(entry, (tuple, list)) else entry)
    return PartitionSpec(*entries)


def parse_logical_axis_rules(rules: Sequence[Sequence[Any]],
                             where: str = "config.mesh.logical_axis_rules"
                             ) -> tuple[tuple[str, Any], ...]:
    """`((logical name, mesh axis or None), ...)` from the config (or a model plugin), checked."""
    for index, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                and (rule[1] is None or rule[1] in AXES)):
            raise ConfigError(f"{where}[{index}]={rule!r} must be a pair "
                              f"(logical axis name, mesh axis): the mesh axis one of "
                              f"{', '.join(AXES)} or None, e.g. ('mlp', 'model').")
    return tuple((name, axis) for name, axis in rules)


def logical_param_specs(annotated_params: Any, logical_axis_rules: Sequence[tuple[str, Any]]
                        ) -> dict[str, tuple[PartitionSpec, tuple[str, ...]]]:
    """Mesh specs of the parameters a Flax model annotated with logical axis names, and those
    names, by path."""
    boxed = jax.tree_util.tree_flatten_with_path(
        annotated_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    return {path_text(path): (nn.logical_to_mesh_axes(leaf.names, logical_axis_rules),
                              tuple(leaf.names))
            for path, leaf in boxed if isinstance(leaf, nn.LogicallyPartitioned)}


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Split a large array along its largest dimension divisible by `fsdp_size`, else replicate."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    largest = max(candidates, key=lambda d: (shape[d], -d))
    return PartitionSpec(*(("fsdp" if d == largest else None) for d in range(len(shape))))


def _check_fits(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, path: str,
                source: str) -> None:
    if len(spec) > len(shape):
        raise ConfigError(f"{source} gives {path} (shape {tuple(shape)}) the spec {spec}, which "
                          f"has {len(spec)} entries for {len(shape)} dimensions.")
    for dim, entry in enumerate(spec):
        axes = entry if isinstance(entry, tuple) else (entry,)
        shards = math.prod(mesh.shape[a] for a in axes if a is not None)
        if shape[dim] % shards:
            raise ConfigError(
                f"{source} splits dimension {dim} of {path} (shape {tuple(shape)}) over {spec} = "
                f"{shards} shards, which does not divide {shape[dim]}. Change the rule or the "
                "mesh sizes.")


def param_specs(abstract_params: Any, mesh: Mesh, rules: Sequence[Rule],
                fsdp_min_size: int,
                logical: dict[str, tuple[PartitionSpec, tuple[str, ...]]] | None = None
                ) -> dict[str, PartitionSpec]:
    """The partition spec of every parameter, keyed by its path."""
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        name = path_text(path)
        rule = next(((regex, spec) for regex, spec in rules if regex.search(name)), None)
        if rule is not None:
            spec, source = rule[1], f"config.mesh.rules entry {rule[0].pattern!r}"
        elif logical and name in logical:
            spec, names = logical[name]
            source = f"the model's logical axis annotation {names}"
        else:
            spec, source = fsdp_spec(leaf.shape, mesh.shape["fsdp"], fsdp_min_size), "FSDP"
        _check_fits(spec, leaf.shape, mesh, name, source)
        specs[name] = spec
    return specs


def state_shardings(abstract_state: Any, mesh: Mesh, specs: dict[str, PartitionSpec],
                    fsdp_min_size: int) -> Any:
    """NamedShardings for a whole train state: params by `specs`, mirrors of params likewise."""
    shapes = {path_text(path): tuple(leaf.shape) for path, leaf
              in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
    by_length = sorted(specs, key=len, reverse=True)

    def sharding(path: Sequence[Any], leaf: Any) -> NamedSharding:
        name = path_text(path)
        top = name.split("/", 1)[0]
        if top == "params":
            return NamedSharding(mesh, specs[name.split("/", 1)[1]])
        if top in ("step", "rng"):
            return NamedSharding(mesh, PartitionSpec())
        for param in by_length:  # Optimizer moments are stored under the parameter's path.
            if (name.endswith("/" + param) or name == param) and tuple(leaf.shape) == shapes[param]:
                return NamedSharding(mesh, specs[param])
        return NamedSharding(mesh, fsdp_spec(leaf.shape, mesh.shape["fsdp"], fsdp_min_size))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def train_state_shardings(mesh_config: Any, mesh: Mesh, abstract_state: Any,
                          annotated_params: Any,
                          model_logical_axis_rules: Sequence[Sequence[Any]] = ()) -> Any:
    """The shardings `config.mesh` asks for, for every array of a train state.

    `model_logical_axis_rules` (the model plugin's `logical_axis_rules`) apply when
    `config.mesh.logical_axis_rules` is empty.
    """
    if mesh_config.logical_axis_rules:
        rules = parse_logical_axis_rules(mesh_config.logical_axis_rules)
    else:
        rules = parse_logical_axis_rules(model_logical_axis_rules or (),
                                         "the model plugin's logical_axis_rules")
    logical = logical_param_specs(annotated_params, rules)
    specs = param_specs(abstract_state.params, mesh, parse_rules(mesh_config.rules),
                        mesh_config.fsdp_min_size, logical)
    return state_shardings(abstract_state, mesh, specs, mesh_config.fsdp_min_size)
