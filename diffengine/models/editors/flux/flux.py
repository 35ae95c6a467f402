"""FLUX.1 [dev] and [schnell] with LoRA adapters on the transformer and
the CLIP text encoder."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import (
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from diffengine.architectures import FLUX_DEV, FLUX_SCHNELL
from diffengine.errors import ConfigError
from diffengine.models.editors.base import (
    TextEncoder,
    first_parameter,
    token_ids,
)
from diffengine.models.editors.flow_matching import FlowMatchingTransformer
from diffengine.models.editors.t5 import t5_encoder
from diffengine.registry import MODELS

#: FluxPipeline's defaults for [dev] (guidance-distilled) and [schnell]'s
#: model card (timestep-distilled: 4 steps, no guidance).
DEV_SAMPLING = dict(num_inference_steps=28, guidance_scale=3.5)
SCHNELL_SAMPLING = dict(num_inference_steps=4, guidance_scale=0.0)


@MODELS.register_module()
class Flux(FlowMatchingTransformer):
    """FLUX.1 [dev] and [schnell] trained through LoRA adapters, by flow
    matching.

    Two text encoders, as ``FluxPipeline.encode_prompt`` uses them: CLIP-L's
    pooled output is the transformer's pooled projection, T5-XXL's last
    hidden states its token sequence. The transformer sees the latents in
    2×2 patches packed into a sequence (``FluxPipeline._pack_latents``),
    with rotary position ids of each patch and zero ids of the text tokens,
    and the noise level σ in [0, 1] as its timestep. The objective is
    ``FlowMatchSchedule`` with the scheduler config's shift: [dev]'s is
    resolution-dependent (``mu`` from the number of 2×2 patches), [schnell]'s
    is none.

    [dev] is guidance-distilled: its transformer embeds the guidance scale
    it should imitate. Training gives it a constant ``guidance_scale``; 1.0,
    as kohya's sd-scripts, SimpleTuner and ai-toolkit train it, keeps the
    adapter away from the distilled guidance, so that the scale chosen at
    sampling (3.5 by default) still steers it. [schnell] embeds none and
    refuses the option.

    Args:
        model (str): Hub id or local diffusers folder of the FLUX.1 base.
        transformer_lora_config (dict, optional): The transformer's adapter.
            Defaults to None.
        text_encoder_lora_config (dict, optional): CLIP-L's adapter; T5
            takes none. Defaults to None.
        guidance_scale (float, optional): The guidance the transformer is
            given in training, when it embeds one. Defaults to 1.0 for
            [dev], None for [schnell].
        max_sequence_length (int, optional): T5 tokens per prompt, training
            and sampling alike. Defaults to FluxPipeline's 512 for [dev],
            256 for [schnell] (the model card's).
        text_encoder_2_lora_config (dict, optional): Refused when given:
            T5 takes no adapter. Defaults to None.
        **kwargs: Every other option of :class:`LatentDiffusionModel`.
    """

    pipeline_class = FluxPipeline
    denoiser_class = FluxTransformer2DModel
    text_encoders: ClassVar[tuple[TextEncoder, ...]] = (
        TextEncoder("text_encoder", CLIPTextModel, CLIPTokenizer),
        t5_encoder("text_encoder_2"),
    )
    t5: ClassVar[TextEncoder] = text_encoders[1]
    #: [dev]'s; a [schnell] base takes :data:`SCHNELL_SAMPLING`
    #: (:meth:`sampling_defaults_for`).
    sampling_defaults: ClassVar[dict[str, Any]] = DEV_SAMPLING
    #: The VAE's 8 × the 2×2 packing.
    size_multiple = 16

    def __init__(self, model: str, guidance_scale: float | None = None,
                 max_sequence_length: int | None = None,
                 text_encoder_2_lora_config: dict | None = None,
                 **kwargs: Any) -> None:
        if text_encoder_2_lora_config is not None:
            raise ConfigError(
                "text_encoder_2_lora_config is set, but Flux adapts no T5 "
                "(text_encoder_2): drop it; CLIP-L's adapter is "
                "text_encoder_lora_config.")
        self.check_max_sequence_length(max_sequence_length)
        super().__init__(model, **kwargs)
        guided = self.transformer.config.guidance_embeds
        if guidance_scale is not None and not guided:
            raise ConfigError(
                f"guidance_scale={guidance_scale}, but the transformer of "
                f"{model!r} embeds no guidance (FLUX.1 [schnell]); drop it.")
        self.guidance_scale = (1.0 if guidance_scale is None else
                               guidance_scale) if guided else None
        self.max_sequence_length = max_sequence_length or (
            self.call_defaults_for(
                self.transformer.config)["max_sequence_length"])

    @property
    def architecture(self) -> str:
        """FLUX.1 [dev] or [schnell], from the guidance embedding."""
        guided = self.transformer.config.guidance_embeds
        return (FLUX_DEV if guided else FLUX_SCHNELL).name

    @classmethod
    def sampling_defaults_for(cls, denoiser_config: Any = None
                              ) -> dict[str, Any]:
        """[dev]'s defaults, or [schnell]'s for a transformer that embeds
        no guidance: the same for :meth:`infer`, the sample hook, class
        images and ``demo``."""
        if denoiser_config is not None and not denoiser_config.get(
                "guidance_embeds", True):
            return dict(SCHNELL_SAMPLING)
        return dict(DEV_SAMPLING)

    @classmethod
    def call_defaults_for(cls, denoiser_config: Any = None
                          ) -> dict[str, Any]:
        """T5's tokens per prompt: FluxPipeline's 512 for [dev], the model
        card's 256 for [schnell] (training's default too, so that ``demo``
        samples a step as :meth:`infer` does)."""
        schnell = denoiser_config is not None and not denoiser_config.get(
            "guidance_embeds", True)
        return {"max_sequence_length": 256 if schnell else 512}

    def encode_text(self, text: list[str]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5's token sequence (B × L × D_T5) and CLIP-L's pooled output
        (B × D_CLIP), as ``FluxPipeline.encode_prompt`` gives them."""
        pooled = self.text_encoder(token_ids(
            self.tokenizer, text, self.text_encoder)).pooler_output
        return self.t5_embeddings(text), pooled

    def training_metadata(self) -> dict[str, str]:
        """The guidance [dev] trained with, which ``export_lora`` writes
        as ``ss_guidance_scale``."""
        if self.guidance_scale is None:
            return {}
        return {"guidance_scale": str(self.guidance_scale)}

    def encode_images(self, img: torch.Tensor) -> torch.Tensor:
        """As :meth:`LatentDiffusionModel.encode_images`, refusing image
        sides whose latents do not pack into 2×2 patches, by the size of
        the images (before the latent cache or the first step encodes
        them)."""
        height, width = img.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ConfigError(
                f"images of {width}×{height} px do not pack into Flux's 2×2 "
                "patches of latents: give image sides that are multiples "
                f"of {self.size_multiple} (e.g. RandomCrop's size=32, or "
                "BucketResizeCrop's bucket_reso_steps=64).")
        return super().encode_images(img)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                inputs: dict, prompt: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        batch, channels, height, width = noisy.shape
        if height % 2 or width % 2:
            raise ConfigError(
                f"latents of {height}×{width} do not pack into Flux's 2×2 "
                f"patches: give image sides that are multiples of "
                f"{self.size_multiple} (e.g. BucketResizeCrop's "
                "bucket_reso_steps=64).")
        embeddings, pooled = prompt
        dtype = first_parameter(self.transformer).dtype
        device = noisy.device
        packed = FluxPipeline._pack_latents(
            noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, device, dtype)
        text_ids = torch.zeros(embeddings.shape[1], 3, device=device,
                               dtype=dtype)
        guidance = None if self.guidance_scale is None else torch.full(
            (batch, ), self.guidance_scale, device=device, dtype=dtype)
        prediction = self.transformer(
            hidden_states=packed.to(dtype),
            # the transformer scales σ and the guidance by 1000 itself
            timestep=(timesteps / 1000).to(dtype),
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=embeddings.to(dtype),
            txt_ids=text_ids,
            img_ids=image_ids).sample
        # vae_scale_factor=1: height and width are already the latents'
        return FluxPipeline._unpack_latents(
            prediction, height, width, 1)
