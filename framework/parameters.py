"""The parameter overview printed at the start of a run and kept as WORKDIR/parameters.txt.

One row per parameter array (path, shape, dtype, count, sharding over the mesh), then totals:
what a reader checks first when a model is bigger, smaller or placed differently than intended.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import NamedSharding

from framework.sharding import path_text


def _sharding_text(array: Any) -> str:
    sharding = getattr(array, "sharding", None)
    if isinstance(sharding, NamedSharding):
        if all(axis is None for axis in sharding.spec):
            return "replicated"
        return str(tuple(sharding.spec))
    return str(sharding) if sharding is not None else "-"


def _size_text(num_bytes: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = min(int(math.log(num_bytes, 1024)) if num_bytes else 0, len(units) - 1)
    return f"{num_bytes} B" if power == 0 else f"{num_bytes / 1024 ** power:.1f} {units[power]}"


def count_parameters(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def parameter_table(params: Any) -> str:
    """A text table of every parameter array of `params`, with totals in its last line."""
    rows = [("PARAMETER", "SHAPE", "DTYPE", "COUNT", "SHARDING")]
    num_bytes = 0
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        count = math.prod(leaf.shape)
        num_bytes += count * leaf.dtype.itemsize
        rows.append((path_text(path), str(tuple(leaf.shape)), str(leaf.dtype), f"{count:,}",
                     _sharding_text(leaf)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if column == 3 else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.append(f"Total: {count_parameters(params):,} parameters in {len(leaves)} arrays, "
                 f"{_size_text(num_bytes)}.")
    return "\n".join(lines)
