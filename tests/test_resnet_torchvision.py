"""The resnet plugin reads torchvision's ResNet-18 weights and then computes torchvision's logits.

torchvision is not a dependency: the test writes ResNet-18 in PyTorch with torchvision's module
names, layouts, paddings and BatchNorm settings, gives it random weights and batch statistics,
and compares its eval-mode logits with the converted jaxforge model's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

import framework
from framework import config as config_lib
from framework import init_from, loop, testing
from framework.weights import flat_collections
from plugins.models import resnet

STAGES, WIDTH, CLASSES = (2, 2, 2, 2), 64, 10


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):  # torchvision.models.resnet.ResNet with BasicBlock
    def __init__(self, layers, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        inplanes = 64
        for index, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(inplanes, planes, stride)]
            stage += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture(scope="module")
def torch_resnet18():
    torch.manual_seed(0)
    model = ResNet(STAGES, CLASSES)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # Batch statistics and affine parameters far from the defaults.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                features = module.num_features
                module.weight.copy_(torch.rand(features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(features, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(features, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(100)
    return model.eval()


def _state_dict(model):
    return {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def _torch_logits(model, inputs):
    with torch.no_grad():
        return model(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()


def _jax_resnet18():
    plugin = framework.registry.load("models", "resnet")
    config = plugin.default_config()
    config.update({"stage_sizes": STAGES, "width": WIDTH, "stem": "imagenet"})
    metadata = framework.DatasetMetadata(input_shape=(64, 64, 3), num_classes=CLASSES,
                                         num_train=1, num_eval=1)
    return plugin.build(config, metadata, jnp.float32)


def _variables(converted):
    """Flax variables from `COLLECTION/PATH` arrays."""
    variables = {}
    for name, value in converted.items():
        *keys, leaf = name.split("/")
        node = variables
        for key in keys:
            node = node.setdefault(key, {})
        node[leaf] = jnp.asarray(value)
    return variables


def test_torchvision_layout_is_what_the_test_builds(torch_resnet18):
    shapes = {name: tuple(value.shape) for name, value in torch_resnet18.state_dict().items()}
    assert shapes == resnet.torchvision_shapes(STAGES, WIDTH, 3, CLASSES)
    assert sum(v.numel() for v in torch_resnet18.parameters()) == 11_689_512 - 513 * (1000 -
                                                                                     CLASSES)


def test_converted_resnet18_gives_torchvision_logits(torch_resnet18):
    inputs = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    converted = resnet.convert_weights(_state_dict(torch_resnet18))
    model = _jax_resnet18()
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
    expected = flat_collections(expected.pop("params"), expected)
    assert {n: tuple(v.shape) for n, v in converted.items()} == {
        n: tuple(v.shape) for n, v in expected.items()}
    logits = np.asarray(model.apply(_variables(converted), inputs, train=False))
    reference = _torch_logits(torch_resnet18, inputs)
    assert np.abs(reference).max() > 0.1  # Not trivially small.
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0)


def test_an_unknown_tensor_is_an_error():
    with pytest.raises(framework.JaxforgeError, match="layer1.0.conv3.weight"):
        resnet.convert_weights({"layer1.0.conv3.weight": np.ones((4, 4, 1, 1), np.float32)})


def test_init_from_convert_reads_a_torchvision_safetensors_file(torch_resnet18, tmp_path):
    """The documented fine-tune: torchvision's weights as safetensors, a new 4-class head."""
    path = tmp_path / "resnet18.safetensors"
    save_file(_state_dict(torch_resnet18), str(path))
    config = config_lib.resolve_config(testing.tiny_config(
        model={"name": "resnet", "stem": "imagenet", "stage_sizes": STAGES, "width": WIDTH},
        dataset={"name": "synthetic", "shape": (32, 32, 3), "num_classes": 4},
        init_from={"path": str(path), "convert": True, "on_mismatch": "reinit"}))
    setup = loop.set_up(config)
    state = init_from.initial_state(setup)
    flat = flat_collections(state.params, state.model_state)
    source = resnet.convert_weights(_state_dict(torch_resnet18))
    for name, value in source.items():
        if not name.startswith("params/Dense_0"):
            np.testing.assert_array_equal(np.asarray(flat[name]), value, err_msg=name)
    assert flat["params/Dense_0/kernel"].shape == (512, 4)  # The new head: fresh.


@pytest.mark.parametrize("stage_sizes,width,stem", [((3, 3, 3), 16, "cifar"), ((1,), 4, "cifar"),
                                                    ((3, 4, 6, 3), 8, "imagenet")])
def test_every_array_of_other_layouts_is_converted(stage_sizes, width, stem):
    """Whatever the stages (ResNet-34's too), the converter names every array of the model."""
    plugin = framework.registry.load("models", "resnet")
    config = plugin.default_config()
    config.update({"stage_sizes": stage_sizes, "width": width, "stem": stem})
    metadata = framework.DatasetMetadata(input_shape=(32, 32, 1), num_classes=4, num_train=1,
                                         num_eval=1)
    model = plugin.build(config, metadata, jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)),
                                                  train=False))
    expected = flat_collections(variables.pop("params"), variables)
    foreign = {name: np.zeros(shape, np.float32) for name, shape in
               resnet.torchvision_shapes(stage_sizes, width, 1, 4, stem).items()}
    converted = resnet.convert_weights(foreign)
    assert {n: v.shape for n, v in converted.items()} == {
        n: tuple(v.shape) for n, v in expected.items()}


def test_register_model_takes_a_converter():
    plugin = framework.registry.load("models", "resnet")
    name = "resnet_with_converter_test"
    framework.register_model(name, default_config=plugin.default_config,
                             convert_weights=resnet.convert_weights,
                             convert_weights_example=resnet.convert_weights_example)(plugin.build)
    try:
        registered = framework.registry.load("models", name)
        assert registered.convert_weights is resnet.convert_weights
        assert registered.convert_weights_example is resnet.convert_weights_example
    finally:
        framework.registry.unregister("models", name)
