"""The weight ComfyUI makes of one kohya/LyCORIS module, rebuilt for the
tests from what its loader does (``comfy/weight_adapter/lora.py``,
``loha.py``, ``lokr.py``, ``base.py``: ``calculate_weight`` and
``weight_decompose``), independently of diffengine's exporter.

ComfyUI patches a float32 copy of the model weight W:

- LoRA: ΔW = U D with U = ``lora_up.weight`` and D = ``lora_down.weight``
  flattened to matrices, reshaped to W; factor = alpha / rows of D.
- LoHa: ΔW = (w1a w1b) ⊙ (w2a w2b); with ``hada_t1`` / ``hada_t2`` each
  product is the Tucker rebuild t ×₁ wa ×₂ wb (wa, wb of shape rank × out /
  rank × in); factor = alpha / rows of ``hada_w1_b``.
- LoKr: w1 = ``lokr_w1`` or ``lokr_w1_a`` ``lokr_w1_b``; w2 = ``lokr_w2``,
  ``lokr_w2_a`` ``lokr_w2_b`` or the Tucker rebuild with ``lokr_t2``; a 4-D
  w2 gives w1 two unit dimensions; ΔW = w1 ⊗ w2 reshaped to W; factor =
  alpha / rows of the last decomposed factor's ``_b`` (w2's, else w1's),
  and 1 (alpha unused) when both factors are full.
- No ``dora_scale``: W + strength × factor × ΔW.
- ``dora_scale``: Wc = W + factor × ΔW, divided by a norm plus the float32
  epsilon and multiplied by ``dora_scale``: the norm of each output row of
  the *frozen* W when ``dora_scale`` has W's first dimension, else of each
  input column of Wc; at strength s ≠ 1 the result is W + s (Wc − W).
"""
from __future__ import annotations

import copy

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from diffengine.adapters.kohya import kohya_modules
from tests.oracles.comfyui_keys import comfyui_lora_key_map

EPS = torch.finfo(torch.float32).eps


def _tucker(core: torch.Tensor, wa: torch.Tensor,
            wb: torch.Tensor) -> torch.Tensor:
    # out[p, r, k, l] = sum_ij core[i, j, k, l] * wb[j, r] * wa[i, p]
    return torch.einsum("ijkl,jr,ip->prkl", core, wb, wa)


def _lora(t: dict) -> tuple[torch.Tensor, int]:
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    return up.flatten(1) @ down.flatten(1), down.shape[0]


def _loha(t: dict) -> tuple[torch.Tensor, int]:
    if "hada_t1" in t:
        m1 = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"])
        m2 = _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    else:
        m1 = t["hada_w1_a"] @ t["hada_w1_b"]
        m2 = t["hada_w2_a"] @ t["hada_w2_b"]
    return m1 * m2, t["hada_w1_b"].shape[0]


def _lokr(t: dict) -> tuple[torch.Tensor, int | None]:
    dim = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
        dim = t["lokr_w1_b"].shape[0]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    else:
        dim = t["lokr_w2_b"].shape[0]
        if "lokr_t2" in t:
            w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2), dim


def comfyui_weight(weight: torch.Tensor, tensors: dict[str, torch.Tensor],
                   strength: float = 1.0) -> torch.Tensor:
    """The weight ComfyUI gives a module of frozen ``weight`` patched with
    one kohya module's ``tensors`` (``<suffix>: tensor``, ``alpha`` among
    them) at ``strength``."""
    weight = weight.double()
    t = {k: v.double() for k, v in tensors.items()}
    if any(k.startswith("hada_") for k in t):
        delta, dim = _loha(t)
    elif any(k.startswith("lokr_") for k in t):
        delta, dim = _lokr(t)
    else:
        delta, dim = _lora(t)
    delta = delta.reshape(weight.shape)
    factor = 1.0
    if "alpha" in t and dim is not None:
        factor = t["alpha"].item() / dim
    if "dora_scale" not in t:
        return weight + strength * factor * delta
    scale = t["dora_scale"]
    calc = weight + factor * delta
    if scale.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
        norm = norm.reshape(-1, *[1] * (weight.ndim - 1))
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (weight.ndim - 2))
    calc = calc * (scale / (norm + EPS))
    if strength != 1.0:
        return weight + strength * (calc - weight)
    return calc


def merged_weights(model, strength=1.0):
    """(frozen, merged) weight of every adapted layer, merged by peft at
    ``strength``, keyed as ComfyUI's key map names the modules."""
    weights = {}
    for part in model.trainable_parts:
        # in float64, so that the comparison shows the file's error, not
        # float32's rounding of W + ΔW
        module = copy.deepcopy(getattr(model, part)).double()
        for name, layer in module.named_modules():
            if isinstance(layer, BaseTunerLayer):
                frozen = layer.get_base_layer().weight.detach().clone()
                layer.scale_layer(strength)
                layer.merge()
                weights[f"{part}.{name}"] = (
                    frozen, layer.get_base_layer().weight.detach().clone())
    return weights


def rebuild_error(model, exported, strength=1.0, rebuild=comfyui_weight,
                  key_map=None):
    """The largest |rebuilt - trained| / max|trained - frozen| over the
    adapted modules of ``model``, which the kohya tensors ``exported`` must
    all hold, with the number of convolutions among them.

    ``rebuild`` makes a module's weight from the file as ComfyUI does;
    ``key_map`` (kohya name → (ComfyUI weight, diffusers module)) defaults
    to ComfyUI's SD 1.x names.
    """
    if key_map is None:
        key_map = comfyui_lora_key_map(
            model.unet.config, model.text_encoder.config.num_hidden_layers)
    merged = merged_weights(model, strength)
    modules = kohya_modules(exported)
    assert {key_map[name][1] for name in modules} == set(merged)
    worst, convs = 0.0, 0
    for name, tensors in modules.items():
        frozen, trained = merged[key_map[name][1]]
        rebuilt = rebuild(frozen, tensors, strength)
        change = (trained - frozen).abs().max()
        assert change > 0, name
        worst = max(worst, ((rebuilt - trained).abs().max() / change).item())
        convs += frozen.ndim == 4
    return worst, convs
