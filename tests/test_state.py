"""HostCopy: a state kept on the host, shard by shard, comes back equal and with its shardings."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from framework.state import HostCopy


def test_a_host_copy_outlives_donation_and_comes_back_with_its_shardings():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    tree = {
        "sharded": jax.device_put(jnp.arange(64.0).reshape(8, 8),
                                  NamedSharding(mesh, P("data", "model"))),
        "replicated": jax.device_put(jnp.arange(3, dtype=jnp.int32), NamedSharding(mesh, P())),
        "key": jax.random.key(7),
        "nothing": None,
    }
    expected = {"sharded": np.arange(64.0).reshape(8, 8), "replicated": np.arange(3)}
    copy = HostCopy(tree)
    jax.jit(lambda t: jax.tree.map(lambda x: x * 0, t), donate_argnums=0)(
        {k: tree[k] for k in ("sharded", "replicated")})  # The originals are gone.

    restored = copy.to_devices()
    for name, value in expected.items():
        np.testing.assert_array_equal(restored[name], value)
        assert restored[name].sharding == tree[name].sharding
    assert restored["nothing"] is None
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(tree["key"])
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                  jax.random.key_data(jax.random.key(7)))
    leaves = dict(zip(["key", "replicated", "sharded"], copy._leaves))  # Flattening's order.
    # A replicated array is kept once, not once per device; a sharded one once per shard.
    assert len(leaves["replicated"].blocks) == 1 and len(leaves["replicated"].placement) == 8
    assert len(leaves["sharded"].blocks) == 8
