"""A ResNet of basic blocks (He et al. 2016), for CIFAR-sized or ImageNet-sized images.

`stem="cifar"` (section 4.2) keeps the resolution: a 3x3 convolution. `stage_sizes=(3, 3, 3)`
with `width=16` is ResNet-20; `(2, 2, 2, 2)` with `width=64` the ResNet-18 layout used on CIFAR.
`stem="imagenet"` (table 1) quarters it first, a 7x7/2 convolution and a 3x3/2 max-pool, so
224x224 images reach the first stage at 56x56: with `(2, 2, 2, 2)` and `width=64` this is
ResNet-18, with `(3, 4, 6, 3)` ResNet-34.

`convert_weights` reads torchvision's ResNet state dicts (basic blocks: `resnet18`, `resnet34`)
saved as safetensors, for `config.init_from.convert=true`. With the ImageNet stem the blocks'
3x3 convolutions pad 1 on each side, as torchvision's do, so its weights give its logits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

import framework

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    features: int
    strides: int
    dtype: Any
    # The 3x3 convolutions' padding. "SAME" pads a stride-2 one (0, 1) on even sizes; torchvision
    # pads (1, 1), which the ImageNet stem uses so that torchvision's weights give its logits.
    # The CIFAR stem keeps "SAME" (its runs' results unchanged); stride 1 is the same either way.
    padding: Any = "SAME"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,  # noqa: E731
                                    dtype=self.dtype)
        conv = lambda f, k, s: nn.Conv(f, (k, k), (s, s),  # noqa: E731
                                       padding=self.padding if k == 3 else "SAME",
                                       use_bias=False, dtype=self.dtype)
        y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
        y = norm()(conv(self.features, 3, 1)(y))
        if x.shape != y.shape:
            x = norm()(conv(self.features, 1, self.strides)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    width: int
    num_classes: int
    stem: str = "cifar"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                        dtype=self.dtype)(x)
        else:
            x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        padding = ((1, 1), (1, 1)) if self.stem == "imagenet" else "SAME"
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.dtype,
                               padding=padding)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        stage_sizes=((3, 3, 3), "Basic blocks per stage; each stage after the first halves the "
                                "resolution and doubles the width."),
        width=(16, "Channels of the stem and the first stage."),
        stem=("cifar", "cifar: 3x3 convolution | imagenet: 7x7/2 convolution and 3x3/2 "
                       "max-pool."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(len(config.stage_sizes) > 0 and all(s > 0 for s in config.stage_sizes),
                    "stage_sizes", f"must be positive block counts, got "
                    f"{config.stage_sizes}.")
    framework.check(config.width > 0, "width", f"must be > 0, got {config.width}.")
    framework.check(config.stem in STEMS, "stem",
                    f"must be one of {', '.join(STEMS)}, got {config.stem!r}.")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> ResNet:
    return ResNet(stage_sizes=tuple(config.stage_sizes), width=config.width,
                  num_classes=metadata.num_classes, stem=config.stem, dtype=dtype)


# torchvision's weights ---------------------------------------------------------------------

_BLOCK_TENSOR = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
# torchvision's module names -> this model's: the stem, a block's layers, the head.
_STEM = {"conv1": "Conv_0", "bn1": "BatchNorm_0", "fc": "Dense_0"}
_BLOCK = {"conv1": "Conv_0", "bn1": "BatchNorm_0", "conv2": "Conv_1", "bn2": "BatchNorm_1",
          "downsample.0": "Conv_2", "downsample.1": "BatchNorm_2"}
# A BatchNorm's tensors: (collection, name).
_NORM = {"weight": ("params", "scale"), "bias": ("params", "bias"),
         "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def convert_weights(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict of basic blocks (`resnet18`, `resnet34`; numpy arrays)
    -> this model's arrays by `COLLECTION/PATH`.

    `conv1`/`bn1` are the stem's `Conv_0`/`BatchNorm_0`; block Y of `layerX` is `BasicBlock_N`,
    the blocks numbered in order across the stages, its `conv1`, `bn1`, `conv2`, `bn2`,
    `downsample.0` and `downsample.1` being `Conv_0`, `BatchNorm_0`, `Conv_1`, `BatchNorm_1`,
    `Conv_2` and `BatchNorm_2`; `fc` is `Dense_0`. Convolution kernels go from (out, in, h, w)
    to (h, w, in, out), the dense kernel from (out, in) to (in, out); a BatchNorm's `weight`
    and `bias` are its `params` `scale` and `bias`, `running_mean` and `running_var` its
    `batch_stats` `mean` and `var`; `num_batches_tracked` is dropped. A name outside that
    layout (a bottleneck's `conv3`, say) is an error.
    """
    blocks = sorted({(int(m[1]), int(m[2])) for m in map(_BLOCK_TENSOR.match, tensors) if m})
    number = {block: index for index, block in enumerate(blocks)}
    converted = {}
    for name, value in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        match = _BLOCK_TENSOR.match(module)
        if match and match[3] in _BLOCK:
            path = f"BasicBlock_{number[int(match[1]), int(match[2])]}/{_BLOCK[match[3]]}"
        elif module in _STEM:
            path = _STEM[module]
        else:
            raise framework.JaxforgeError(
                f"convert_weights: {name!r} is not a tensor of torchvision's ResNet of basic "
                "blocks (conv1, bn1, layerX.Y.conv1/bn1/conv2/bn2/downsample.0/downsample.1, "
                "fc).")
        value = np.asarray(value)
        if "BatchNorm" in path and leaf in _NORM:
            collection, leaf_name = _NORM[leaf]
            converted[f"{collection}/{path}/{leaf_name}"] = value
        elif "Conv" in path and leaf == "weight" and value.ndim == 4:
            converted[f"params/{path}/kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        elif path == "Dense_0" and leaf == "weight" and value.ndim == 2:
            converted["params/Dense_0/kernel"] = np.ascontiguousarray(value.T)
        elif path == "Dense_0" and leaf == "bias":
            converted["params/Dense_0/bias"] = value
        else:
            raise framework.JaxforgeError(
                f"convert_weights: {name!r} (shape {value.shape}) is not a tensor of "
                "torchvision's ResNet of basic blocks.")
    return converted


def torchvision_shapes(stage_sizes: Sequence[int], width: int, in_channels: int,
                       num_classes: int, stem: str = "imagenet") -> dict[str, tuple[int, ...]]:
    """The names and shapes of torchvision's state dict for this ResNet (`stem="cifar"`: a 3x3
    `conv1`, which torchvision does not have, in its layout)."""
    size = 7 if stem == "imagenet" else 3
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (width, in_channels, size, size)}

    def norm(prefix: str, features: int) -> None:
        shapes.update({f"{prefix}.{leaf}": (features,) for leaf in _NORM})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    norm("bn1", width)
    features = width
    for stage, blocks in enumerate(stage_sizes):
        out = width * 2**stage
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (out, features, 3, 3)
            norm(f"{prefix}.bn1", out)
            shapes[f"{prefix}.conv2.weight"] = (out, out, 3, 3)
            norm(f"{prefix}.bn2", out)
            if (stage > 0 and block == 0) or features != out:
                shapes[f"{prefix}.downsample.0.weight"] = (out, features, 1, 1)
                norm(f"{prefix}.downsample.1", out)
            features = out
    shapes.update({"fc.weight": (num_classes, features), "fc.bias": (num_classes,)})
    return shapes


def convert_weights_example(config: ml_collections.ConfigDict,
                            metadata: framework.DatasetMetadata) -> dict[str, np.ndarray]:
    """The state dict torchvision would hold for the network `config` and `metadata` build (for
    the conformance check `model_convert_weights`): every tensor, with values of no meaning.
    Its logits against torchvision's are checked in tests/test_resnet_torchvision.py."""
    shapes = torchvision_shapes(config.stage_sizes, config.width, metadata.input_shape[-1],
                                metadata.num_classes, config.stem)
    rng = np.random.default_rng(0)
    return {name: (np.zeros(shape, np.int64) if name.endswith("num_batches_tracked")
                   else rng.uniform(0.5, 1.0, shape).astype(np.float32))
            for name, shape in shapes.items()}


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          convert_weights=convert_weights,
                          convert_weights_example=convert_weights_example,
                          api_version=1, description=__doc__.splitlines()[0])
