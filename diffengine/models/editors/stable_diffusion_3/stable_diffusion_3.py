"""Stable Diffusion 3 and 3.5 (Medium, Large) with LoRA adapters on the
MMDiT transformer and the CLIP text encoders."""
from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import (
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from diffengine.architectures import sd3_architecture
from diffengine.errors import ConfigError
from diffengine.models.editors.base import (
    TextEncoder,
    first_parameter,
    token_ids,
)
from diffengine.models.editors.flow_matching import FlowMatchingTransformer
from diffengine.models.editors.t5 import t5_encoder
from diffengine.registry import MODELS

T5 = t5_encoder("text_encoder_3")


@MODELS.register_module()
class StableDiffusion3(FlowMatchingTransformer):
    """Stable Diffusion 3 Medium, 3.5 Medium and 3.5 Large trained through
    LoRA adapters, by flow matching.

    Three text encoders: CLIP ViT-L and OpenCLIP ViT-bigG (both with their
    projections) give their penultimate hidden states, concatenated and
    zero-padded to T5's width, and their pooled projections, concatenated;
    T5-XXL's last hidden states follow the CLIP tokens in the sequence, as
    ``StableDiffusion3Pipeline.encode_prompt`` builds it. The transformer
    denoises with ``FlowMatchSchedule`` and the shift of the model's
    scheduler config (3.0 for every published SD3 and SD3.5).
    ``text_encoder_lora_config`` adapts both CLIPs alike; T5 takes no
    adapter (diffusers' SD3 loader reads none).

    Args:
        model (str): Hub id or local diffusers folder of the SD3 base.
        transformer_lora_config (dict, optional): The adapter of the
            transformer, as ``unet_lora_config`` is for SD 1.x (diffusers'
            spelling). Defaults to None.
        use_t5 (bool): Encode prompts with T5. False leaves it out
            altogether, as ``StableDiffusion3Pipeline(text_encoder_3=None)``
            does (its tokens are then zeros): about 9.5 GB less in fp16,
            at some cost in prompt following. Defaults to True.
        max_sequence_length (int): T5 tokens per prompt; the pipeline's
            default. Defaults to 256.
        **kwargs: Every other option of :class:`LatentDiffusionModel`.
    """

    pipeline_class = StableDiffusion3Pipeline
    denoiser_class = SD3Transformer2DModel
    text_encoders: ClassVar[tuple[TextEncoder, ...]] = (
        TextEncoder("text_encoder", CLIPTextModelWithProjection,
                    CLIPTokenizer),
        TextEncoder("text_encoder_2", CLIPTextModelWithProjection,
                    CLIPTokenizer),
        T5,
    )
    t5: ClassVar[TextEncoder] = T5
    #: StableDiffusion3Pipeline's own defaults (SD3 Medium's model card).
    sampling_defaults: ClassVar[dict[str, Any]] = dict(
        num_inference_steps=28, guidance_scale=7.0)
    #: The VAE's 8 × the transformer's patch size of 2.
    size_multiple = 16

    def __init__(self, model: str, use_t5: bool = True,
                 max_sequence_length: int = 256, **kwargs: Any) -> None:
        self.check_max_sequence_length(max_sequence_length)
        self.use_t5 = use_t5
        self.max_sequence_length = max_sequence_length
        if not use_t5:
            # an instance attribute: load_parts and pipeline_parts skip T5
            self.text_encoders = self.text_encoders[:2]
        super().__init__(model, **kwargs)

    @property
    def architecture(self) -> str:
        """SD3 Medium, SD3.5 Medium or SD3.5 Large, from the transformer."""
        return sd3_architecture(self.transformer.config).name

    def load_parts(self, model: str, dtype: torch.dtype) -> None:
        if self.use_t5 and os.path.isdir(model):
            missing = [name for name in (T5.name, T5.tokenizer)
                       if not os.path.isdir(os.path.join(model, name))]
            if missing:
                raise ConfigError(
                    f"model={model!r} lacks T5 (the subfolders {missing}): "
                    "point model.model at a folder with T5, or leave T5 out "
                    "with --cfg-options model.use_t5=False.")
        super().load_parts(model, dtype)

    def encode_text(self, text: list[str]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token sequence (B × 77 + L × D_T5: both CLIPs' penultimate
        hidden states concatenated and zero-padded to T5's width, then T5's
        L tokens) and the pooled vector (B × P1+P2)."""
        hidden_states, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(token_ids(tokenizer, text, encoder),
                             output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
            pooled.append(output[0])
        clip = torch.cat(hidden_states, dim=-1)
        width = self.transformer.config.joint_attention_dim
        if self.use_t5:
            t5 = self.t5_embeddings(text)
        else:
            t5 = clip.new_zeros(len(text), self.max_sequence_length, width)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(
            pooled, dim=-1)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                inputs: dict, prompt: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        height, width = noisy.shape[-2:]
        patch = self.transformer.config.patch_size
        if height % patch or width % patch:
            raise ConfigError(
                f"latents of {height}×{width} do not split into the "
                f"transformer's {patch}×{patch} patches: give image sides "
                f"that are multiples of {self.size_multiple} (e.g. "
                "BucketResizeCrop's bucket_reso_steps=64).")
        embeddings, pooled = prompt
        dtype = first_parameter(self.transformer).dtype
        return self.transformer(
            hidden_states=noisy.to(dtype),
            timestep=timesteps,
            encoder_hidden_states=embeddings.to(dtype),
            pooled_projections=pooled.to(dtype)).sample

    def pipeline_parts(self) -> dict[str, Any]:
        parts = super().pipeline_parts()
        if not self.use_t5:
            parts.update(text_encoder_3=None, tokenizer_3=None)
        return parts
