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


def test_resnet_imagenet_stem_is_resnet18_at_224():
    """With the ImageNet stem, (2, 2, 2, 2) x 64 is ResNet-18: torchvision's 11,689,512
    parameters, and 224x224 inputs reach the first stage at 56x56."""
    import framework
    from framework.parameters import count_parameters
    config = framework.registry.load("models", "resnet").default_config()
    config.update({"stage_sizes": (2, 2, 2, 2), "width": 64, "stem": "imagenet"})
    metadata = framework.DatasetMetadata(input_shape=(224, 224, 3), num_classes=1000,
                                         num_train=1, num_eval=1)
    module = framework.registry.load("models", "resnet").build(config, metadata, jnp.float32)
    variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 224, 224, 3)), train=False))
    assert count_parameters(variables["params"]) == 11_689_512
    _, intermediates = jax.eval_shape(lambda variables: module.apply(
        variables, jnp.zeros((2, 224, 224, 3)), train=False, capture_intermediates=True,
        mutable=["intermediates"]), variables)
    assert intermediates["intermediates"]["BasicBlock_0"]["__call__"][0].shape == (2, 56, 56, 64)
    assert intermediates["intermediates"]["BasicBlock_7"]["__call__"][0].shape == (2, 7, 7, 512)


def test_resnet_rejects_an_unknown_stem():
    import framework
    from framework.errors import ConfigError
    from framework.testing import tiny_config
    with pytest.raises(ConfigError, match=r"stem.*must be one of cifar, imagenet, got 'imgnet'"):
        framework.resolve_config(tiny_config(
            model={"name": "resnet", "stem": "imgnet"}))
