"""The ``quantization`` option on real tiny models: the denoiser loads
quantized through diffusers, LoRA trains in fp32 on top, the step file
holds the adapters alone with the quantization in its metadata and loads
into the unquantized diffusers pipeline; torchao's layers keep no
dequantized weight for the backward pass; bad options fail in one line."""
import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from diffengine.errors import ConfigError
from diffengine.export.standalone_lora import export_lora
from diffengine.models import (
    Flux,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
)
from diffengine.models.utils import quantization
from diffengine.models.utils.quantization import (
    FrozenQuantizedLinear,
    build_quantization,
)
from tests.conftest import SD3_TARGETS, TEXT_TARGETS, UNET_TARGETS

CPU_QUANTIZATIONS = [("torchao", "int8"), ("torchao", "float8"),
                     ("quanto", "int8"), ("quanto", "float8")]
# The step folder loaded into the unquantized base differs from the model
# trained on the quantized base by the quantization error of the base:
# its largest difference in the denoiser output may be at most this many
# times that of the bare base (quantized against unquantized, adapters
# off). Measured on the tiny Flux and SD3.5 (int8 and float8, torchao and
# quanto): 0.98 to 1.10 times.
RELOAD_BOUND = 1.5


def build(family, path, backend, weights, **kwargs):
    quantization = dict(backend=backend, weights=weights)
    if family in (StableDiffusion, StableDiffusionXL):
        return family(
            path, quantization=quantization, unet_lora_config=dict(
                r=4, lora_alpha=4, target_modules=UNET_TARGETS), **kwargs)
    return family(path, quantization=quantization,
                  transformer_lora_config=dict(
                      r=4, lora_alpha=4, target_modules=SD3_TARGETS),
                  **kwargs)


def batch(size=64):
    generator = torch.Generator().manual_seed(0)
    return {"img": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
            "text": ["a red circle", "a blue square"], "seed": [5, 6],
            # SDXL's size conditioning, which the other families ignore
            "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]]
                                     * 2)}


def train(model, steps=3):
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch(), mode="loss")["loss"].backward()
        optimizer.step()


def adapters_on(module, enabled):
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(enabled)


def denoiser_output(model, denoiser=None):
    """The denoiser's prediction on fixed latents and prompts, with
    ``denoiser`` (the unquantized pipeline's) in the model's place."""
    own = model.denoiser
    if denoiser is not None:
        setattr(model, model.denoiser_name, denoiser)
    try:
        generator = torch.Generator().manual_seed(1)
        channels = model.vae.config.latent_channels
        noisy = torch.randn(2, channels, 8, 8, generator=generator)
        timesteps = torch.tensor([300.0, 700.0])
        with torch.no_grad():
            prompt = model.encode_prompt(["a red circle", "a blue square"])
            return model.denoise(noisy, timesteps, {}, prompt).float()
    finally:
        setattr(model, model.denoiser_name, own)


def reload_error(model, pipeline_class, path, step_dir):
    """The largest difference between the denoiser outputs of ``model``
    (trained on a quantized base) and of its step folder loaded into the
    unquantized ``pipeline_class`` of ``path``; that of the bare bases
    (the quantization error, for scale); and that of the unquantized base
    with and without the step folder (what the adapters change)."""
    pipe = pipeline_class.from_pretrained(path)
    bare = denoiser_output(model, pipe.transformer)
    pipe.load_lora_weights(step_dir)
    trained = denoiser_output(model)
    reloaded = denoiser_output(model, pipe.transformer)
    adapters_on(model.denoiser, False)
    try:
        bare_error = (denoiser_output(model) - bare).abs().max().item()
    finally:
        adapters_on(model.denoiser, True)
    return ((trained - reloaded).abs().max().item(), bare_error,
            (reloaded - bare).abs().max().item())


@pytest.mark.parametrize("backend, weights", CPU_QUANTIZATIONS)
@pytest.mark.parametrize("family, fixture, pipeline_class", [
    (Flux, "tiny_flux", FluxPipeline),
    (StableDiffusion3, "tiny_sd3", StableDiffusion3Pipeline),
], ids=["flux", "sd3.5"])
def test_lora_trains_on_the_quantized_base_and_loads_into_the_full_one(
        family, fixture, pipeline_class, backend, weights, request,
        tmp_path):
    path = request.getfixturevalue(fixture)
    model = build(family, path, backend, weights)
    base_layer = model.denoiser.transformer_blocks[0].attn.to_q.base_layer
    assert type(base_layer.weight).__name__ in {
        "Int8Tensor", "Float8Tensor", "WeightQBytesTensor"}
    trainable = {n: p for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    before = {n: p.detach().clone() for n, p in trainable.items()}
    train(model)
    assert any(not torch.equal(before[n], p) for n, p in trainable.items()
               if "lora_B" in n)
    assert set(model.state_dict()) == set(trainable)

    model.save_lora_weights(str(tmp_path))
    step_file = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(step_file), "pt") as f:
        assert all("lora" in k for k in f.keys())  # noqa: SIM118
        recorded = json.loads(f.metadata()["diffengine.quantization"])
    assert recorded == dict(backend=backend, weights=weights,
                            text_encoders=False)

    error, bare_error, change = reload_error(model, pipeline_class, path,
                                             str(tmp_path))
    print(f"{family.__name__} {backend} {weights}: reload error {error:.2e}"
          f" = {error / bare_error:.2f} x the bare base's {bare_error:.2e};"
          f" the adapters change the output by {change:.2e}")
    assert 0 < error <= RELOAD_BOUND * bare_error
    assert change > error  # the step folder did load


def loss_gradients_and_saved_weights(model):
    """The loss of one batch, the adapters' gradients, and the shapes of
    the float tensors saved for the backward pass that have the shape of a
    quantized weight (or its transpose): dequantized weight copies. At 96
    px no activation of the tiny Flux has such a shape."""
    shapes = {tuple(m.weight.shape) for m in model.denoiser.modules()
              if type(getattr(m, "weight", None)).__name__ in {
                  "Int8Tensor", "Float8Tensor", "WeightQBytesTensor"}}
    shapes |= {shape[::-1] for shape in shapes}
    saved = []

    def pack(tensor):
        if type(tensor) is torch.Tensor and tensor.is_floating_point() and (
                tuple(tensor.shape) in shapes):
            saved.append(tuple(tensor.shape))
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch(96), mode="loss")["loss"]
    loss.backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters()
                 if p.requires_grad}
    return loss.detach(), gradients, saved


@pytest.mark.parametrize("chunk", [None, 64], ids=["whole", "in-bands"])
@pytest.mark.parametrize("backend, weights, layers", [
    ("torchao", "int8", 30), ("torchao", "float8", 30), ("quanto", "int8", 0),
])
def test_the_backward_pass_keeps_the_quantized_weight(
        backend, weights, layers, chunk, tiny_flux, monkeypatch):
    if chunk is not None:  # dequantized 2 columns at a time, or 1
        monkeypatch.setattr(quantization, "DEQUANTIZE_CHUNK", chunk)
    model = build(Flux, tiny_flux, backend, weights)
    frozen = [m for m in model.modules()
              if type(m) is FrozenQuantizedLinear]
    assert len(frozen) == layers
    # non-zero up-projections, so that every adapter has a gradient
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape,
                                         generator=generator) * 0.1
    loss, gradients, saved = loss_gradients_and_saved_weights(model)
    assert saved == []
    # torchao's own linear, as loaded: it saves a float copy of the weight
    for layer in frozen:
        layer.__class__ = torch.nn.Linear
    plain_loss, plain_gradients, plain_saved = (
        loss_gradients_and_saved_weights(model))
    assert len(plain_saved) == (12 if layers else 0)
    assert torch.equal(loss, plain_loss)
    # float8 gives the same gradients bit for bit with the whole weight
    # (1.1e-6 of the norm in bands: other BLAS blockings); int8 within
    # 7.1e-7, fp32 rounding (its linear scales the product by the weight's
    # scales, the backward pass multiplies by the dequantized weight); the
    # bound leaves room for other BLAS kernels
    for name, gradient in plain_gradients.items():
        error = (gradients[name] - gradient).norm()
        assert error <= 2e-6 * gradient.norm(), name


def test_a_trainable_quantized_weight_is_refused(tiny_flux):
    model = build(Flux, tiny_flux, "torchao", "float8")
    model.denoiser.transformer_blocks[0].attn.to_q.base_layer.bias \
        .requires_grad_(True)
    with pytest.raises(RuntimeError, match="must be frozen"):
        model(batch(), mode="loss")


@pytest.mark.parametrize("family, fixture, backend, weights", [
    (StableDiffusion, "tiny_sd", "torchao", "int8"),
    (StableDiffusion, "tiny_sd", "quanto", "float8"),
    (StableDiffusionXL, "tiny_sdxl", "torchao", "float8"),
], ids=["sd-torchao-int8", "sd-quanto-float8", "sdxl-torchao-float8"])
def test_unet_quantizes_trains_samples_and_exports(
        family, fixture, backend, weights, request, tmp_path):
    model = build(family, request.getfixturevalue(fixture), backend,
                  weights)
    base_layer = next(m for n, m in model.unet.named_modules()
                      if n.endswith("to_q.base_layer"))
    assert type(base_layer.weight).__name__ in {
        "Int8Tensor", "Float8Tensor", "WeightQBytesTensor"}
    train(model, steps=1)
    assert all("lora_" in k for k in model.state_dict())
    # the sample hook's images, through the pipeline on the quantized base
    image = model.infer(["a red circle"], seed=0, num_inference_steps=2,
                        height=32, width=32, output_type="np")[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    model.save_lora_weights(str(tmp_path / "step1"))
    exported = export_lora(str(tmp_path / "step1"),
                           str(tmp_path / "kohya.safetensors"))
    assert exported and all(k.startswith("lora_unet_") for k in exported)
    with safe_open(str(tmp_path / "kohya.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["diffengine.quantization"])[
            "weights"] == weights


def test_text_encoders_quantize_when_asked(tiny_sd3):
    model = StableDiffusion3(
        tiny_sd3, quantization=dict(backend="quanto", weights="int8",
                                    text_encoders=True),
        transformer_lora_config=dict(r=4, target_modules=SD3_TARGETS),
        text_encoder_lora_config=dict(r=2, target_modules=TEXT_TARGETS))
    q_proj = model.text_encoder.text_model.encoder.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer.weight).__name__ == "WeightQBytesTensor"
    train(model, steps=1)
    assert {n.split(".")[0] for n, p in model.named_parameters()
            if p.requires_grad} == {"transformer", "text_encoder",
                                    "text_encoder_2"}


@pytest.mark.parametrize("options, message", [
    (dict(backend="gptq", weights="int8"),
     "quantization backend='gptq'; choose one of ['torchao', 'quanto', "
     "'bitsandbytes']."),
    (dict(backend="torchao", weights="nf4"),
     "quantization weights='nf4' is not one of torchao's: ['int8', "
     "'float8', 'int4']."),
    (dict(backend="quanto", weights="int8", bits=8),
     "quantization has unknown keys ['bits']; it takes backend, weights "
     "and text_encoders."),
])
def test_bad_options_fail_in_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        build_quantization(options)
    assert str(error.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU host")
@pytest.mark.parametrize("backend, weights", [
    ("bitsandbytes", "nf4"), ("bitsandbytes", "int8"), ("torchao", "int4")])
def test_cuda_only_weights_fail_on_a_cpu(backend, weights, tiny_sd):
    with pytest.raises(ConfigError) as error:
        build(StableDiffusion, tiny_sd, backend, weights)
    assert str(error.value) == (
        f"quantization backend={backend!r} weights={weights!r} needs a CUDA "
        "GPU, and none is available; on a CPU use backend='torchao' or "
        "'quanto' with weights='int8' or 'float8'.")


def test_a_missing_package_names_its_pip_command(monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if (
        name.startswith("optimum")) else find_spec(name))
    with pytest.raises(ConfigError, match=r"^quantization backend='quanto' "
                       r"needs its package: pip install optimum-quanto$"):
        build_quantization(dict(backend="quanto", weights="int8"))


def test_none_keeps_the_base_unquantized(tiny_sd):
    assert build_quantization(None) is None
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=4, target_modules=UNET_TARGETS))
    assert model.quantization is None
    assert type(model.unet.conv_in.weight) is torch.nn.Parameter
