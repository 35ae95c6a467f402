"""LoHa (Hyeon-Woo et al., 2022, "FedPara"; LyCORIS' ``loha``): the
Hadamard product of two rank-r products,
ΔW = (W1a W1b) ⊙ (W2a W2b) × alpha / r.

Convolutions flatten to (out, in·k·k), or with ``use_effective_conv2d``
(LyCORIS' ``use_tucker``) keep a Tucker core per factor:
ΔW = (T1 ×₁ W1a ×₂ W1b) ⊙ (T2 ×₁ W2a ×₂ W2b).

``load_lora_weights`` does not read LoHa: step folders hold the LyCORIS
file, ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (and
``hada_t1``, ``hada_t2``) as peft lays them out, which is LyCORIS' layout,
and ``alpha`` = strength × r, which ComfyUI and AUTOMATIC1111 divide by
the rank of ``hada_w1_b``.
"""
from __future__ import annotations

import torch
from peft import LoHaConfig

from diffengine.adapters.lycoris import LycorisKind


class LoHa(LycorisKind):
    """peft's ``LoHaConfig``."""

    name = "LoHa"
    config_class = LoHaConfig
    peft_type = "LOHA"
    parameters = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                  "hada_t1", "hada_t2")
    kohya_keys = ("hada_w1_a", )
    algo = "loha"

    def tensor_rank(self, tensors):
        return tensors["hada_w1_b"].shape[0]

    def to_kohya(self, tensors, scale, rank, base_weight=None):
        return {**tensors,
                "alpha": torch.tensor(scale * self.tensor_rank(tensors),
                                      dtype=torch.float32)}

    def from_kohya(self, tensors, scale):
        return {k: v for k, v in tensors.items() if k != "alpha"}

    def kohya_rank(self, tensors):
        return self.tensor_rank(tensors)

    def network_args(self, config, has_conv):
        return {**super().network_args(config, has_conv),
                "use_tucker": str(bool(config.get("use_effective_conv2d")))}


LOHA = LoHa()
