"""EfficientNet-Lite0 as a tf.Module, built from the converted ImageNet state dict.

Lite means ReLU6 everywhere, no squeeze-excite, fixed stem and head. BatchNorm
(epsilon 1e-3) is folded into the preceding convolution at build time, so the served
graph is conv + bias + activation only. The served signature takes uint8 NHWC images
already cropped and resized to 224x224 and normalises them inside the graph, so callers
(and the wire) only ever carry uint8 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 224
BN_EPSILON = 1e-3
# (repeats, kernel, stride, expand ratio, output channels) per MBConv stage.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
# Input normalisation the weights were trained with: (x - 127) / 128.
MEAN, STD = 127.0, 128.0


def _fold(state: dict[str, np.ndarray], conv: str, bn: str, depthwise: bool = False):
    """Fold BatchNorm `bn` into convolution `conv`; return (TF kernel, bias)."""
    w = state[f"{conv}.weight"]
    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPSILON)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    if depthwise:  # torch O1HW -> TF HW(C)(1)
        kernel = w.transpose(2, 3, 0, 1) * scale[None, None, :, None]
    else:  # torch OIHW -> TF HWIO
        kernel = w.transpose(2, 3, 1, 0) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


@dataclass
class _Block:
    stride: int
    residual: bool
    expand: tuple[tf.Variable, tf.Variable] | None
    depthwise: tuple[tf.Variable, tf.Variable]
    project: tuple[tf.Variable, tf.Variable]


def _variables(pair, name: str) -> tuple[tf.Variable, tf.Variable]:
    kernel, bias = pair
    return (
        tf.Variable(kernel, trainable=False, name=f"{name}_kernel"),
        tf.Variable(bias, trainable=False, name=f"{name}_bias"),
    )


class EfficientNetLite0(tf.Module):
    def __init__(self, state: dict[str, np.ndarray]):
        super().__init__(name="efficientnet_lite0")
        self.stem = _variables(_fold(state, "_conv_stem", "_bn0"), "stem")
        self.blocks: list[_Block] = []
        channels = 32
        index = 0
        for repeats, _kernel, stride, expand, out in STAGES:
            for r in range(repeats):
                p = f"_blocks.{index}"
                s = stride if r == 0 else 1
                self.blocks.append(
                    _Block(
                        stride=s,
                        residual=(s == 1 and channels == out),
                        expand=_variables(_fold(state, f"{p}._expand_conv", f"{p}._bn0"), f"b{index}_expand")
                        if expand != 1
                        else None,
                        depthwise=_variables(
                            _fold(state, f"{p}._depthwise_conv", f"{p}._bn1", depthwise=True), f"b{index}_dw"
                        ),
                        project=_variables(_fold(state, f"{p}._project_conv", f"{p}._bn2"), f"b{index}_project"),
                    )
                )
                channels = out
                index += 1
        self.head = _variables(_fold(state, "_conv_head", "_bn1"), "head")
        self.fc_kernel = tf.Variable(state["_fc.weight"].T.astype(np.float32), trainable=False, name="fc_kernel")
        self.fc_bias = tf.Variable(state["_fc.bias"].astype(np.float32), trainable=False, name="fc_bias")
        # tf.Module tracks variables in attributes; dataclasses are opaque to it.
        self._block_variables = [v for b in self.blocks for pair in (b.expand, b.depthwise, b.project) if pair for v in pair]

    @staticmethod
    def _conv(x, params, stride=1):
        kernel, bias = params
        return tf.nn.conv2d(x, kernel, strides=stride, padding="SAME") + bias

    @staticmethod
    def _depthwise(x, params, stride):
        kernel, bias = params
        return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME") + bias

    def embed(self, images):
        """uint8 images -> the 1280 pooled features the classifier reads (what
        `python -m image_cluster.models retrain` fits a new head on)."""
        x = (tf.cast(images, tf.float32) - MEAN) / STD
        x = tf.nn.relu6(self._conv(x, self.stem, stride=2))
        for block in self.blocks:
            inputs = x
            if block.expand is not None:
                x = tf.nn.relu6(self._conv(x, block.expand))
            x = tf.nn.relu6(self._depthwise(x, block.depthwise, block.stride))
            x = self._conv(x, block.project)
            if block.residual:
                x = x + inputs
        x = tf.nn.relu6(self._conv(x, self.head))
        return tf.reduce_mean(x, axis=[1, 2])

    def replace_head(self, kernel: np.ndarray, bias: np.ndarray) -> None:
        """A new classifier (features x classes, classes): the same backbone, new classes."""
        self.fc_kernel = tf.Variable(kernel.astype(np.float32), trainable=False, name="fc_kernel")
        self.fc_bias = tf.Variable(bias.astype(np.float32), trainable=False, name="fc_bias")

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")])
    def serve(self, images):
        logits = tf.matmul(self.embed(images), self.fc_kernel) + self.fc_bias
        return {"probabilities": tf.nn.softmax(logits)}
