"""LoKr (Yeh et al., 2023, "Navigating Text-To-Image Customization";
LyCORIS' ``lokr``): a Kronecker product, ΔW = (W1 ⊗ W2) × alpha / r.

Each factor is a full matrix or, where r is small against it, the product
of two rank-r matrices (``lokr_w1_a @ lokr_w1_b``; W1 only with
``decompose_both``); a convolution's W2 may keep a Tucker core ``lokr_t2``
(``use_effective_conv2d``, LyCORIS' ``use_tucker``).

``load_lora_weights`` does not read LoKr for Stable Diffusion: step folders
hold the LyCORIS file with peft's tensors (LyCORIS' layout) and ``alpha``
= strength × r, which ComfyUI and AUTOMATIC1111 divide by the rank of a
decomposed factor. Two of their ways shape the file:

- Where they see no decomposed factor they apply no alpha at all (LyCORIS
  writes alpha = r there); the strength is then multiplied into
  ``lokr_w1``.
- ComfyUI's loader fails on a Tucker core: ``torch.kron`` of the
  non-contiguous rebuild of ``lokr_t2`` raises, and the layer is left
  unpatched (ComfyUI #11245). Beside ``lokr_t2``, ``lokr_w2_a`` and
  ``lokr_w2_b`` the file therefore holds their rebuild as a full
  ``lokr_w2``, which both UIs use when present; this project reloads the
  factors.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from peft import LoKrConfig

from diffengine.adapters.lycoris import LYCORIS_ALIASES, LycorisKind


def decomposed_rank(tensors) -> int | None:
    """The rank of the decomposed factor (W2's where both are), None when
    both are full matrices."""
    for key in ("lokr_w2_b", "lokr_w1_b"):
        if key in tensors:
            return tensors[key].shape[0]
    return None


def ui_rank(kohya) -> int | None:
    """The rank ComfyUI divides a kohya module's alpha by: that of the last
    factor it rebuilds from a product (a full ``lokr_w2`` is used as it
    is), None when it rebuilds none and applies no alpha. AUTOMATIC1111
    takes ``lokr_w2_b``'s rank where present; written as
    :meth:`LoKr.to_kohya` writes them, both give the same strength."""
    if "lokr_w2" not in kohya:
        return kohya["lokr_w2_b"].shape[0]
    if "lokr_w1_b" in kohya:
        return kohya["lokr_w1_b"].shape[0]
    return None


def tucker_rebuild(core: torch.Tensor, wa: torch.Tensor,
                   wb: torch.Tensor) -> torch.Tensor:
    """W2 of a Tucker-decomposed factor: core ×₁ wa ×₂ wb, as peft builds it
    (wa: rank × out, wb: rank × in)."""
    return torch.einsum("ijkl,ip,jr->prkl", core, wa, wb).contiguous()


class LoKr(LycorisKind):
    """peft's ``LoKrConfig``."""

    name = "LoKr"
    config_class = LoKrConfig
    peft_type = "LOKR"
    parameters = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2",
                  "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    kohya_keys = parameters
    algo = "lokr"
    aliases: ClassVar[Mapping[str, str]] = {
        **LYCORIS_ALIASES, "factor": "decompose_factor"}

    def tensor_rank(self, tensors):
        rank = decomposed_rank(tensors)
        if rank is None:
            raise ValueError("a LoKr module of two full factors shows no "
                             "rank; its config has it.")
        return rank

    def to_kohya(self, tensors, scale, rank, base_weight=None):
        kohya = dict(tensors)
        if "lokr_t2" in tensors:
            kohya["lokr_w2"] = tucker_rebuild(
                tensors["lokr_t2"], tensors["lokr_w2_a"],
                tensors["lokr_w2_b"])
        dim = ui_rank(kohya)
        if dim is None:
            kohya["lokr_w1"] = tensors["lokr_w1"] * scale
            kohya["alpha"] = torch.tensor(float(rank))
        else:
            kohya["alpha"] = torch.tensor(scale * dim, dtype=torch.float32)
        return kohya

    def from_kohya(self, tensors, scale):
        peft = {k: v for k, v in tensors.items() if k != "alpha"}
        if ui_rank(tensors) is None:
            peft["lokr_w1"] = peft["lokr_w1"] / scale
        if "lokr_t2" in peft:
            del peft["lokr_w2"]  # the rebuild written for the UIs
        return peft

    def kohya_rank(self, tensors):
        return ui_rank(tensors)

    def network_args(self, config, has_conv):
        return {**super().network_args(config, has_conv),
                "factor": str(config.get("decompose_factor", -1)),
                "decompose_both": str(bool(config.get("decompose_both"))),
                "use_tucker": str(bool(config.get("use_effective_conv2d")))}


LOKR = LoKr()
