"""Stable Diffusion 1.x with LoRA adapters on the UNet and text encoder."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import convert_state_dict_to_diffusers
from mmengine.logging import print_log
from mmengine.model import BaseModel
from peft import LoraConfig, get_peft_model_state_dict
from transformers import CLIPTextModel, CLIPTokenizer

from diffengine.errors import ConfigError, NonFiniteLossError
from diffengine.inference import generate
from diffengine.lora_file import WEIGHT_NAME, add_training_metadata
from diffengine.models.editors.stable_diffusion.model_folder import (
    check_model_path,
    resolve_model,
)
from diffengine.models.utils import add_lora_adapter, count_trainable_parameters
from diffengine.models.utils.dtypes import resolve_dtype
from diffengine.models.utils.fingerprint import weights_fingerprint
from diffengine.models.utils.text_embedding_cache import TextEmbeddingCache
from diffengine.registry import MODELS


def canonical_text_encoder_keys(state_dict: dict) -> dict:
    """Name text-encoder LoRA keys as ``text_model.encoder.layers.N...``.

    transformers 5.x ``CLIPTextModel`` has no ``text_model`` submodule; every
    other stack (transformers 4.x, A1111, ComfyUI) names the layers under it,
    and diffusers loads that form on both.
    """
    return {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in state_dict.items()
    }


def first_parameter(module: torch.nn.Module) -> torch.Tensor:
    """The first parameter of ``module``: its device and (for the frozen
    base) its dtype.

    diffusers' ``ModelMixin.dtype`` and ``.device`` walk every submodule
    (about 2 ms for SD 1.5's UNet), too slow to ask at every step.
    """
    return next(module.parameters())


@MODELS.register_module()
class StableDiffusion(BaseModel):
    """Stable Diffusion 1.x trained through LoRA adapters.

    The base (VAE, text encoder, UNet) is frozen; only the adapters train, in
    fp32 whatever the dtype of the base or of autocast, so that small updates
    are not lost to rounding.

    Args:
        model (str): Hub id or local diffusers folder of the base model.
        unet_lora_config (dict, optional): ``type`` (``"LoRA"``) and keyword
            arguments of peft's ``LoraConfig`` for the UNet. Defaults to None
            (the UNet stays frozen).
        text_encoder_lora_config (dict, optional): The same for the CLIP text
            encoder. Defaults to None.
        prediction_type (str, optional): ``"epsilon"`` or ``"v_prediction"``;
            None takes the scheduler's. Defaults to None.
        noise_offset (float): Offset noise strength (Guttenberg, 2023, "Diffusion
            with Offset Noise"); 0 disables it. Defaults to 0.
        gradient_checkpointing (bool): Recompute activations in the backward
            pass to save memory. Defaults to False.
        weight_dtype (str, optional): Keep the frozen base in ``"float16"`` or
            ``"bfloat16"`` (half its memory, and its matmuls run in that
            dtype); the adapters stay fp32. None keeps float32. Defaults to
            None.
        channels_last (bool): Store the UNet's and VAE's convolution weights
            channels-last (NHWC), which tensor cores and oneDNN prefer.
            Defaults to False.
        compile_unet (bool | dict): ``torch.compile`` the UNet in place
            (``nn.Module.compile``, so parameter names stay the same); a dict
            is passed to it as keyword arguments, e.g. ``dict(mode=
            "max-autotune")``. Defaults to False.
        cache_text_embeddings (bool): Encode each distinct caption once and
            reuse its embedding; only with a frozen text encoder. Defaults to
            False.
        data_preprocessor (dict, optional): Defaults to
            ``dict(type="SDDataPreprocessor")``.
    """

    def __init__(self,
                 model: str,
                 unet_lora_config: dict | None = None,
                 text_encoder_lora_config: dict | None = None,
                 prediction_type: str | None = None,
                 noise_offset: float = 0.0,
                 gradient_checkpointing: bool = False,
                 weight_dtype: str | None = None,
                 channels_last: bool = False,
                 compile_unet: bool | dict = False,
                 cache_text_embeddings: bool = False,
                 data_preprocessor: dict | None = None) -> None:
        # Built here from diffengine's registry: BaseModel would look it up
        # in mmengine's root registry, which knows no diffengine module.
        super().__init__(data_preprocessor=MODELS.build(
            data_preprocessor or dict(type="SDDataPreprocessor")))
        if unet_lora_config is None and text_encoder_lora_config is None:
            raise ConfigError(
                "Neither unet_lora_config nor text_encoder_lora_config is "
                "set: nothing would train.")
        if cache_text_embeddings and text_encoder_lora_config is not None:
            raise ConfigError(
                "cache_text_embeddings=True with text_encoder_lora_config: "
                "the text encoder trains, so its embeddings change every "
                "step; drop one of the two.")
        check_model_path(model)
        dtype = resolve_dtype(weight_dtype, "weight_dtype")
        self.base_model = resolve_model(model)
        self.tokenizer = CLIPTokenizer.from_pretrained(
            model, subfolder="tokenizer")
        self.scheduler = DDPMScheduler.from_pretrained(
            model, subfolder="scheduler")
        self.text_encoder = CLIPTextModel.from_pretrained(
            model, subfolder="text_encoder").to(dtype)
        # Loaded in the weight dtype: no float32 copy of the UNet in memory.
        self.vae = AutoencoderKL.from_pretrained(
            model, subfolder="vae", torch_dtype=dtype)
        self.unet = UNet2DConditionModel.from_pretrained(
            model, subfolder="unet", torch_dtype=dtype)
        if prediction_type is not None:
            if prediction_type not in ("epsilon", "v_prediction"):
                raise ConfigError(
                    f"prediction_type={prediction_type!r}; use 'epsilon' or "
                    "'v_prediction'.")
            self.scheduler.register_to_config(prediction_type=prediction_type)
        self.prediction_type = self.scheduler.config.prediction_type
        self.noise_offset = noise_offset
        self.requires_grad_(False)

        self.lora_configs: dict[str, LoraConfig] = {}
        for part, cfg in (("unet", unet_lora_config),
                          ("text_encoder", text_encoder_lora_config)):
            if cfg is not None:
                self.lora_configs[part] = add_lora_adapter(
                    getattr(self, part), cfg, f"{part}_lora_config")
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if "text_encoder" in self.lora_configs:
                self.text_encoder.gradient_checkpointing_enable()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile_unet:
            self.unet.compile(
                **(compile_unet if isinstance(compile_unet, dict) else {}))
        self.text_embeddings = TextEmbeddingCache(
            self._encode_prompt) if cache_text_embeddings else None
        counts = self.trainable_parameter_counts()
        print_log(
            f"LoRA: {sum(counts.values()):,} trainable parameters ("
            + ", ".join(f"{part} {n:,}" for part, n in counts.items())
            + f"); frozen base in {str(dtype).removeprefix('torch.')}",
            logger="current")

    def init_weights(self) -> None:
        """Nothing to initialise: the base is pretrained and the adapters
        were initialised when injected.

        mmengine's default would read every parameter of the base to log
        its mean.
        """

    @property
    def trainable_parts(self) -> list[str]:
        """Names of the submodules that carry trained adapters."""
        return list(self.lora_configs)

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each adapted part, e.g. ``{"unet": n}``."""
        return {part: count_trainable_parameters(getattr(self, part))
                for part in self.lora_configs}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """Only the trainable adapter weights: the frozen base is not saved."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        trainable = {prefix + n for n, p in self.named_parameters()
                     if p.requires_grad}
        return type(state)((k, v) for k, v in state.items() if k in trainable)

    def lora_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The adapters of each trained part, in diffusers' key format."""
        state_dicts = {}
        for part in self.lora_configs:
            peft_state = get_peft_model_state_dict(getattr(self, part))
            state = convert_state_dict_to_diffusers(peft_state)
            if part == "text_encoder":
                state = canonical_text_encoder_keys(state)
            state_dicts[part] = {
                k: v.detach().float().cpu().contiguous()
                for k, v in state.items()
            }
        return state_dicts

    def adapter_metadata(self, part: str) -> dict:
        """The peft config of ``part`` as a dict, with sets sorted so that
        the same weights always give the same file."""
        return {
            k: sorted(v) if isinstance(v, (set, frozenset)) else v
            for k, v in self.lora_configs[part].to_dict().items()
        }

    def save_lora_weights(self, save_directory: str,
                          metadata: dict[str, str] | None = None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` for ``load_lora_weights``.

        The adapter configs go into the file's metadata, so that
        ``lora_alpha`` (and with it the strength) survives the round trip;
        so do the base model, the prediction type and ``metadata``, under
        ``diffengine.*`` keys that diffusers ignores and ``export_lora``
        reads.

        Args:
            save_directory (str): The step folder.
            metadata (dict[str, str], optional): More training facts (step,
                dataset, ...), keys without the ``diffengine.`` prefix.
        """
        state_dicts = self.lora_state_dicts()
        kwargs: dict[str, Any] = {}
        for part, state in state_dicts.items():
            kwargs[f"{part}_lora_layers"] = state
            kwargs[f"{part}_lora_adapter_metadata"] = self.adapter_metadata(
                part)
        StableDiffusionPipeline.save_lora_weights(
            save_directory, safe_serialization=True, **kwargs)
        training = {"base_model": self.base_model,
                    "prediction_type": self.prediction_type,
                    **(metadata or {})}
        add_training_metadata(os.path.join(save_directory, WEIGHT_NAME),
                              training)

    def encode_prompt(self, text: list[str]) -> torch.Tensor:
        """CLIP last hidden states for a list of captions (from the cache
        when ``cache_text_embeddings``)."""
        if self.text_embeddings is not None:
            return self.text_embeddings(text)
        return self._encode_prompt(text)

    def _encode_prompt(self, text: list[str]) -> torch.Tensor:
        input_ids = self.tokenizer(
            text,
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt").input_ids.to(
                first_parameter(self.text_encoder).device)
        return self.text_encoder(input_ids)[0]

    @torch.no_grad()
    def encode_images(self, img: torch.Tensor) -> torch.Tensor:
        """The VAE's latent distributions of images in [-1, 1].

        Returns:
            Tensor: B × 8 × H/8 × W/8 in fp32 on the model's device: the
            mean and log-variance (diffusers' ``DiagonalGaussianDistribution``
            parameters), from which each step draws its latents.
        """
        weight = first_parameter(self.vae)
        img = img.to(weight.device, weight.dtype)
        return self.vae.encode(img).latent_dist.parameters.float()

    def latent_encoder_id(self) -> str:
        """A string that changes whenever :meth:`encode_images` would give
        other values: a digest of the VAE encoder's weights and dtype."""
        return weights_fingerprint(self.vae.encoder, self.vae.quant_conv)

    def forward(self,
                inputs: dict,
                data_samples: Any = None,
                mode: str = "loss") -> dict[str, torch.Tensor]:
        """Denoising loss on a batch; only ``mode="loss"`` is supported."""
        if mode != "loss":
            raise ValueError(
                f"mode={mode!r}: StableDiffusion trains with mode='loss' and "
                "generates with infer().")
        return {"loss": self.denoising_loss(inputs)}

    def denoising_loss(self,
                       inputs: dict,
                       noise: torch.Tensor | None = None,
                       timesteps: torch.Tensor | None = None,
                       generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """MSE between the UNet's prediction and its target, in fp32.

        Args:
            inputs (dict): ``img`` (B×3×H×W in [-1, 1]) or ``latents`` (the
                cached output of :meth:`encode_images` for those images),
                and ``text`` (B str); optionally ``seed`` (B ints).
            noise (Tensor, optional): Fixed noise, shaped like the latents.
            timesteps (Tensor, optional): Fixed timesteps, one per sample.
            generator (torch.Generator, optional): Draws the VAE sample, the
                noise and the timesteps that are not given.
        """
        seeds = inputs.get("seed")
        generators = None
        if generator is None and seeds is not None:
            # One CPU generator per sample: its noise depends on the sample
            # alone, not on the batch split, the device or the process.
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        moments = inputs.get("latents")
        if moments is None:
            moments = self.encode_images(inputs["img"])
        # fp32 from here on: the target and the noisy input stay exact
        # whatever the weight dtype; only the UNet's input is cast.
        latent_dist = DiagonalGaussianDistribution(moments.float())
        mean = latent_dist.mean
        latents = mean + latent_dist.std * self._randn(mean.shape, mean,
                                                       generators, generator)
        latents = latents * self.vae.config.scaling_factor
        if noise is None:
            noise = self._randn(latents.shape, latents, generators, generator)
            if self.noise_offset > 0:
                noise = noise + self.noise_offset * self._randn(
                    (*latents.shape[:2], 1, 1), latents, generators, generator)
        if timesteps is None:
            num_timesteps = self.scheduler.config.num_train_timesteps
            if generators is not None:
                timesteps = torch.cat([
                    torch.randint(0, num_timesteps, (1, ), generator=g)
                    for g in generators
                ]).to(latents.device)
            else:
                timesteps = torch.randint(
                    0, num_timesteps, (latents.shape[0], ),
                    generator=generator, device=latents.device)
        noisy_latents = self.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        encoder_hidden_states = self.encode_prompt(list(inputs["text"]))
        unet_dtype = first_parameter(self.unet).dtype
        model_pred = self.unet(noisy_latents.to(unet_dtype), timesteps,
                               encoder_hidden_states).sample
        return F.mse_loss(model_pred.float(), target.float())

    @staticmethod
    def _randn(shape: tuple, like: torch.Tensor,
               generators: list[torch.Generator] | None,
               generator: torch.Generator | None) -> torch.Tensor:
        """Normal noise shaped ``shape``, per sample when ``generators``."""
        if generators is not None:
            noise = torch.stack(
                [torch.randn(shape[1:], generator=g) for g in generators])
            return noise.to(like.device, like.dtype)
        return torch.randn(shape, generator=generator, device=like.device,
                           dtype=like.dtype)

    def parse_losses(self, losses: dict) -> tuple[torch.Tensor, dict]:
        """mmengine's loss sum, refused when it is NaN or infinite.

        The check runs before the optimizer step, so non-finite values never
        reach the LoRA weights. Across processes the verdict is shared, so
        that every rank stops at the same iteration instead of one waiting
        for the others' gradients.
        """
        loss, log_vars = super().parse_losses(losses)
        finite = torch.isfinite(loss.detach()).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLossError(
                f"the loss is {loss.item()} (on this or another process)")
        return loss, log_vars

    def pipeline(self) -> StableDiffusionPipeline:
        """A diffusers pipeline over the in-memory (adapted) modules.

        The scheduler is loaded from the base model exactly as
        ``DiffusionPipeline.from_pretrained(base)`` loads it, so images match
        what users get after ``load_lora_weights``.
        """
        pipe = StableDiffusionPipeline.from_pretrained(
            self.base_model,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def infer(self,
              prompts: list[str],
              negative_prompt: str | None = None,
              height: int | None = None,
              width: int | None = None,
              num_inference_steps: int = 50,
              guidance_scale: float = 7.5,
              seed: int | Sequence[int] = 0,
              output_type: str = "pil") -> list[np.ndarray]:
        """Generate images with the model as trained so far.

        Images come from :func:`diffengine.inference.generate`, as the
        ``demo`` tool's do, so a step folder loaded in ``demo`` reproduces
        them.

        Args:
            prompts (list[str]): The prompts.
            negative_prompt (str, optional): Defaults to None.
            height (int, optional): Defaults to the UNet's sample size × the
                VAE scale factor.
            width (int, optional): Defaults likewise.
            num_inference_steps (int): Defaults to 50.
            guidance_scale (float): Classifier-free guidance. Defaults to 7.5.
            seed (int | Sequence[int]): One image per prompt and seed; each
                seeds its own CPU generator, so that the same seed gives the
                same image on any device. Defaults to 0.
            output_type (str): ``"pil"`` returns H×W×3 uint8 arrays, ``"np"``
                float arrays in [0, 1]. Defaults to ``"pil"``.

        Returns:
            list[np.ndarray]: The images of the first prompt (one per seed),
            then those of the second, and so on.
        """
        seeds = [seed] if isinstance(seed, int) else list(seed)
        was_training = self.training
        self.eval()
        try:
            pipe = self.pipeline()
            return [
                image for prompt in prompts
                for image in generate(
                    pipe, prompt, seeds,
                    negative_prompt=negative_prompt,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    output_type=output_type)
            ]
        finally:
            self.train(was_training)
