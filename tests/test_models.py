"""Model plugins' building blocks behave like the Flax layers they stand in for."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plugins.models.cnn import max_pool_2x2


@pytest.mark.parametrize("height,width", [(26, 26), (13, 7)])
def test_max_pool_2x2_matches_flax_values_and_gradients_after_relu(height, width):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, height, width, 4)), jnp.float32)
    flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(max_pool_2x2(x), flax_pool(x))

    def grad(pool):  # Through a relu, as in the CNN: ties at zero get no gradient either way.
        return jax.grad(lambda x: jnp.sum(pool(jax.nn.relu(x)) ** 2))(x)

    np.testing.assert_array_equal(grad(max_pool_2x2), grad(flax_pool))
