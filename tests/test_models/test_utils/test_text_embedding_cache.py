"""The text-embedding cache filled before training, and the text encoders
freed after it (``drop_text_encoders_after_caching``)."""
import numpy as np
import pytest
import torch
from mmengine.config import Config

import diffengine.engine  # noqa: F401  (registers the hooks and loops)
from diffengine.engine import DiffEngineRunner
from diffengine.errors import ConfigError
from diffengine.models.editors import StableDiffusion3
from tests.conftest import SD3_TARGETS, tiny_pipeline

# Each family's model type, tiny fixture and text encoders.
FAMILIES = {
    "sd3": ("StableDiffusion3", "tiny_sd3",
            ("text_encoder", "text_encoder_2", "text_encoder_3")),
    "flux": ("Flux", "tiny_flux", ("text_encoder", "text_encoder_2")),
}


def family_runner(family, work_dir, tiny, shapes_data, pipeline=None,
                  **model):
    model_type = FAMILIES[family][0]
    return DiffEngineRunner.from_cfg(Config(dict(
        model=dict(type=model_type, model=tiny,
                   transformer_lora_config=dict(r=2,
                                                target_modules=SD3_TARGETS),
                   **model),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=2, num_workers=0,
            sampler=dict(type="DeterministicSampler", shuffle=True),
            dataset=dict(type="HFDataset", dataset=shapes_data,
                         pipeline=pipeline or tiny_pipeline())),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=3),
        default_hooks=dict(checkpoint=dict(type="LoRACheckpointHook",
                                           by_epoch=False, interval=3)),
        randomness=dict(seed=0),
        # a name of its own: two runners built in the same second would
        # otherwise share one message hub, and with it their losses
        experiment_name=f"{work_dir.parent.name}-{work_dir.name}",
        default_scope="diffengine")))


def sd3_runner(work_dir, tiny_sd3, shapes_data, pipeline=None, **model):
    return family_runner("sd3", work_dir, tiny_sd3, shapes_data, pipeline,
                         **model)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trains_the_same_with_its_text_encoders_freed(family, request,
                                                      tmp_path, shapes_data):
    tiny = request.getfixturevalue(FAMILIES[family][1])
    # T5 reads 16 tokens, for speed
    plain = family_runner(family, tmp_path / "plain", tiny, shapes_data,
                          max_sequence_length=16)
    plain.train()
    dropped = family_runner(family, tmp_path / "dropped", tiny, shapes_data,
                            max_sequence_length=16,
                            cache_text_embeddings=True,
                            drop_text_encoders_after_caching=True)
    dropped.train()
    model = dropped.model
    # every caption of the 24 images was encoded before the first step
    assert len(model.text_embeddings) == len({
        dropped.train_dataloader.dataset.caption_at(i) for i in range(24)})
    for name in FAMILIES[family][2]:
        assert getattr(model, name) is None
        assert not any(k.startswith(f"{name}.") for k in model.state_dict())
    # the same loss at every step, within float rounding: the cache encodes
    # 8 captions at a time, the plain run a batch's 2, which moves the last
    # bits of the embeddings
    losses = [runner.message_hub.get_scalar("train/loss").data[0]
              for runner in (plain, dropped)]
    assert len(losses[0]) == 3
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    trained, reference = model.adapter_state_dicts(), plain.model.adapter_state_dicts()
    for part, weights in reference.items():
        for key, value in weights.items():
            torch.testing.assert_close(trained[part][key], value, rtol=0,
                                       atol=1e-4)
    # a caption that was not cached, and sampling, are one-line errors
    with pytest.raises(ConfigError, match=r"^the caption 'a new caption' has "
                       r"no cached embedding, and drop_text_encoders_after_"
                       r"caching=True freed [^\n]*$"):
        model.encode_prompt(["a new caption"])
    with pytest.raises(ConfigError, match=r"^infer\(\) needs the text "
                       r"encoders, which drop_text_encoders_after_caching"):
        model.infer(["a red circle"])


@pytest.mark.parametrize("trick", [dict(type="RandomTextDrop", p=0.1),
                                   dict(type="ShuffleCaptionTags")])
def test_a_caption_trick_is_refused_before_anything_is_encoded(
        tmp_path, tiny_sd3, shapes_data, trick):
    pipeline = tiny_pipeline()
    pipeline.insert(-1, trick)
    runner = sd3_runner(tmp_path, tiny_sd3, shapes_data, pipeline=pipeline,
                        cache_text_embeddings=True,
                        drop_text_encoders_after_caching=True)
    with pytest.raises(ConfigError, match=(
            rf"^drop_text_encoders_after_caching=True with {trick['type']} "
            r"in the dataset pipeline: [^\n]*drop one of the two\.$")):
        runner.build_train_loop(runner.cfg.train_cfg)
    assert len(runner.model.text_embeddings) == 0
    assert runner.model.text_encoder_3 is not None


def test_the_sample_hook_is_refused_before_the_first_step(tmp_path, tiny_sd3,
                                                          shapes_data):
    runner = sd3_runner(tmp_path, tiny_sd3, shapes_data,
                        cache_text_embeddings=True,
                        drop_text_encoders_after_caching=True)
    runner.register_custom_hooks([dict(type="VisualizationHook",
                                       prompt=["a red circle"])])
    with pytest.raises(ConfigError, match="VisualizationHook samples with "
                       "the text encoders"):
        runner.train()
    assert runner.iter == 0


def test_dropping_the_text_encoders_needs_the_cache(tiny_sd3):
    with pytest.raises(ConfigError, match=r"^drop_text_encoders_after_caching="
                       r"True needs the text-embedding cache: set "
                       r"cache_text_embeddings=True too\.$"):
        StableDiffusion3(tiny_sd3, transformer_lora_config=dict(
            r=2, target_modules=SD3_TARGETS),
            drop_text_encoders_after_caching=True)
