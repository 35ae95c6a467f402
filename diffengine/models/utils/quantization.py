"""The ``quantization`` option: a frozen base whose weights are stored in 8
or 4 bits, quantized at load by diffusers' (and transformers') own
``quantization_config``.

Only the frozen base is quantized; the adapters that peft puts on top of
the quantized layers (``TorchaoLoraLinear`` for torchao, its plain
``Linear`` over quanto's ``QLinear``, ``Linear4bit``/``Linear8bitLt`` for
bitsandbytes) stay float32, so the step files hold the same adapter
weights as without quantization and load into the unquantized pipeline.

``dict(backend="torchao", weights="int8", text_encoders=False)``:

========================  ============================  ===============
backend                   weights                       needs
========================  ============================  ===============
``"torchao"``             ``"int8"``, ``"float8"``      CPU or GPU
                          ``"int4"``                    CUDA
``"quanto"``              ``"int8"``, ``"float8"``      CPU or GPU
                          ``"int4"``                    CUDA
``"bitsandbytes"``        ``"nf4"``, ``"fp4"``,         CUDA
                          ``"int8"``
========================  ============================  ===============

All are weight-only: activations stay in the compute dtype.

torchao's weight-only linear dequantizes the whole weight in every forward
and autograd keeps that float copy for the backward pass, so a quantized
base would hold a float copy of every layer once activations are kept:
:func:`keep_quantized_for_backward` makes those layers keep the quantized
weight instead and dequantize it again in the backward pass. (quanto's
linear saves its quantized weight already.)
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffengine.errors import ConfigError

#: The weights each backend can store, and which of them a CPU can train
#: on: torchao's int4 needs a CUDA-only kernel package, quanto's int4 has no
#: usable CPU kernel and bitsandbytes (through diffusers) refuses to load
#: without a GPU.
WEIGHTS = {
    "torchao": {"int8": "cpu", "float8": "cpu", "int4": "cuda"},
    "quanto": {"int8": "cpu", "float8": "cpu", "int4": "cuda"},
    "bitsandbytes": {"nf4": "cuda", "fp4": "cuda", "int8": "cuda"},
}
#: The import name and pip command of each backend's package.
PACKAGES = {
    "torchao": ("torchao", "pip install torchao"),
    "quanto": ("optimum.quanto", "pip install optimum-quanto"),
    "bitsandbytes": ("bitsandbytes", "pip install bitsandbytes"),
}
CPU_CHOICES = ("backend='torchao' or 'quanto' with weights='int8' or "
               "'float8'")


@dataclass(frozen=True)
class Quantization:
    """How the frozen base is quantized.

    Attributes:
        backend (str): ``"torchao"``, ``"quanto"`` or ``"bitsandbytes"``.
        weights (str): The stored weight type, one of the backend's
            (:data:`WEIGHTS`).
        text_encoders (bool): Quantize the text encoders too (only those
            without an adapter would gain; an adapted one is quantized the
            same way). Defaults to False: the denoiser alone.
    """

    backend: str
    weights: str
    text_encoders: bool = False

    def describe(self) -> str:
        """The JSON a step file records under ``diffengine.quantization``."""
        return json.dumps(asdict(self), sort_keys=True)

    def diffusers_config(self) -> Any:
        """The ``quantization_config`` of a diffusers model."""
        import diffusers
        return self._config(diffusers)

    def transformers_config(self) -> Any:
        """The ``quantization_config`` of a transformers model."""
        import transformers
        return self._config(transformers)

    def _config(self, library: Any) -> Any:
        if self.backend == "torchao":
            from torchao.quantization import (
                Float8WeightOnlyConfig,
                Int4WeightOnlyConfig,
                Int8WeightOnlyConfig,
            )
            config = {"int8": Int8WeightOnlyConfig,
                      "float8": Float8WeightOnlyConfig,
                      "int4": Int4WeightOnlyConfig}[self.weights]()
            return library.TorchAoConfig(config)
        if self.backend == "quanto":
            return library.QuantoConfig(weights=self.weights) if (
                library.__name__ == "transformers") else library.QuantoConfig(
                    weights_dtype=self.weights)
        if self.weights == "int8":
            return library.BitsAndBytesConfig(load_in_8bit=True)
        return library.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.weights,
            bnb_4bit_compute_dtype=torch.bfloat16)


def build_quantization(options: dict | None) -> Quantization | None:
    """The :class:`Quantization` the ``quantization`` option asks for (None
    for None), checked here so that a bad one fails before anything loads.

    Raises:
        ConfigError: For an unknown key, backend or weight type, a weight
            type that needs CUDA on a machine without it, or a backend whose
            package is not installed; the message names the fix.
    """
    if options is None:
        return None
    options = dict(options)
    unknown = sorted(set(options) - {"backend", "weights", "text_encoders"})
    if unknown:
        raise ConfigError(
            f"quantization has unknown keys {unknown}; it takes backend, "
            "weights and text_encoders.")
    backend, weights = options.get("backend"), options.get("weights")
    if backend not in WEIGHTS:
        raise ConfigError(
            f"quantization backend={backend!r}; choose one of "
            f"{list(WEIGHTS)}.")
    if weights not in WEIGHTS[backend]:
        raise ConfigError(
            f"quantization weights={weights!r} is not one of {backend}'s: "
            f"{list(WEIGHTS[backend])}.")
    if WEIGHTS[backend][weights] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"quantization backend={backend!r} weights={weights!r} needs a "
            f"CUDA GPU, and none is available; on a CPU use {CPU_CHOICES}.")
    module, pip = PACKAGES[backend]
    if importlib.util.find_spec(module.split(".")[0]) is None or (
            importlib.util.find_spec(module) is None):
        raise ConfigError(
            f"quantization backend={backend!r} needs its package: {pip}")
    return Quantization(backend, weights,
                        bool(options.get("text_encoders", False)))


#: Elements of the weight that the backward pass dequantizes at a time:
#: torchao's ``dequantize`` goes through float32 and takes 5 times the
#: bf16 result at its peak (450 MB for a 3,072 × 15,360 FLUX.1 layer), so
#: it is done a band of input columns at a time (about 40 MB).
DEQUANTIZE_CHUNK = 2**22


class LinearKeepingQuantizedWeight(torch.autograd.Function):
    """``F.linear`` over a frozen quantized weight that saves the weight
    itself (already held by the layer, so saving it costs nothing) for the
    backward pass, not the float copy that the forward dequantizes: inside
    ``forward`` autograd records nothing, so that copy is freed at once.
    The backward pass dequantizes again, :data:`DEQUANTIZE_CHUNK` elements
    at a time: each band of input columns gives the same columns of the
    input's gradient, whole."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise RuntimeError(
                "a quantized base layer's weight and bias must be frozen "
                "(requires_grad=False); only its adapters train.")
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        weight, = ctx.saved_tensors
        grad_output = grad_output.to(ctx.input_dtype)
        out_features, in_features = weight.shape
        step = max(1, DEQUANTIZE_CHUNK // out_features)
        grad_input = grad_output.new_empty(
            (*grad_output.shape[:-1], in_features))
        for start in range(0, in_features, step):
            columns = weight[:, start:start + step].dequantize(
                ctx.input_dtype)
            grad_input[..., start:start + step] = grad_output @ columns
        return grad_input, None, None


class FrozenQuantizedLinear(nn.Linear):
    """An ``nn.Linear`` over a frozen torchao weight whose backward pass
    keeps the quantized weight, not a dequantized copy
    (:class:`LinearKeepingQuantizedWeight`); set on the loaded layers by
    :func:`keep_quantized_for_backward`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LinearKeepingQuantizedWeight.apply(x, self.weight, self.bias)


def keep_quantized_for_backward(module: nn.Module) -> int:
    """Make each ``nn.Linear`` of ``module`` whose weight is a torchao
    tensor a :class:`FrozenQuantizedLinear`, so that training adapters on
    it keeps no dequantized weight for the backward pass; returns how many.

    The class is swapped in place, so it holds through peft's wrapping
    (the layer becomes the adapter's ``base_layer``) and ``.to(device)``.
    Other layers, quanto's included, are left as they are.
    """
    if importlib.util.find_spec("torchao") is None:
        return 0
    from torchao.utils import TorchAOBaseTensor
    layers = [layer for layer in module.modules()
              if type(layer) is nn.Linear
              and isinstance(layer.weight, TorchAOBaseTensor)]
    for layer in layers:
        layer.__class__ = FrozenQuantizedLinear
    return len(layers)
