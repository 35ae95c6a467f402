"""The adapter file record: where a step folder's file is, what a file
holds (weights, adapter configs, training metadata), each part's kind, rank
and alpha, and its earlier names."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffengine.lora_file
from diffengine.adapter_file import (
    ADAPTER_METADATA_KEY,
    AdapterFile,
    add_training_metadata,
    base_model,
    pack_adapter_configs,
    read_adapter_file,
    unpack_adapter_configs,
    weights_path,
)
from diffengine.adapters import DIFFUSERS_WEIGHT_NAME, LYCORIS_WEIGHT_NAME
from diffengine.adapters.formats import LYCORIS_FILE, file_format
from diffengine.errors import ConfigError, MissingFileError
from diffengine.lora_file import LoRAFile, read_lora_file


def test_earlier_names_are_the_record():
    assert LoRAFile is AdapterFile
    assert read_lora_file is read_adapter_file
    assert set(diffengine.lora_file.__all__) <= set(vars(diffengine.lora_file))


def test_a_lycoris_step_folder_reads_as_one(kind_step):
    """A LoHa step folder reads through the earlier name as the LyCORIS
    file, which the LyCORIS format loads."""
    record = read_lora_file(kind_step("LoHa").step_dir)
    assert isinstance(record, AdapterFile)
    assert record.weight_name == LYCORIS_WEIGHT_NAME
    assert record.kind("unet").name == "LoHa"
    assert file_format(record) is LYCORIS_FILE


def write_file(path, tensors, **metadata) -> str:
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def test_weights_path_takes_the_diffusers_file_before_the_lycoris_one(
        tmp_path):
    tensors = {"unet.a.lora_A.weight": torch.zeros(2, 4)}
    lycoris = write_file(tmp_path / LYCORIS_WEIGHT_NAME, tensors)
    assert weights_path(str(tmp_path)) == lycoris
    diffusers = write_file(tmp_path / DIFFUSERS_WEIGHT_NAME, tensors)
    assert weights_path(str(tmp_path)) == diffusers
    # a file is its own weights, whatever its name
    other = write_file(tmp_path / "other.safetensors", tensors)
    assert weights_path(other) == other


def test_weights_path_names_the_missing_file_and_what_to_give(tmp_path):
    empty = str(tmp_path)
    with pytest.raises(MissingFileError) as error:
        weights_path(empty)
    assert str(error.value) == (
        f"{empty!r} holds no pytorch_lora_weights.safetensors or "
        "lycoris_weights.safetensors; give a step folder "
        "(work_dirs/<config>/step<N>) or a .safetensors file.")
    missing = str(tmp_path / "step4.safetensors")
    with pytest.raises(FileNotFoundError) as error:
        weights_path(missing)
    assert str(error.value) == f"LoRA {missing!r} does not exist."


def test_adapter_configs_are_packed_as_diffusers_part_dot_option_json():
    configs = {"unet": {"r": 4, "lora_alpha": 2,
                        "target_modules": ["to_k", "to_q"]},
               "text_encoder": {"r": 2,
                                "alpha_pattern": {"layers.0.q_proj": 6}}}
    packed = pack_adapter_configs(configs)
    assert json.loads(packed) == {
        "unet.r": 4, "unet.lora_alpha": 2,
        "unet.target_modules": ["to_k", "to_q"], "text_encoder.r": 2,
        "text_encoder.alpha_pattern": {"layers.0.q_proj": 6}}
    assert unpack_adapter_configs(packed) == configs


def test_a_read_file_splits_weights_configs_and_training_metadata(tmp_path):
    tensors = {"unet.a.lora_A.weight": torch.arange(8.).reshape(2, 4),
               "unet.a.lora_B.weight": torch.ones(4, 2)}
    configs = {"unet": {"peft_type": "LORA", "r": 2, "lora_alpha": 1}}
    path = write_file(tmp_path / DIFFUSERS_WEIGHT_NAME, tensors, **{
        ADAPTER_METADATA_KEY: pack_adapter_configs(configs),
        "diffengine.step": "4", "diffengine.base_model": "tiny",
        "format": "pt"})
    record = read_adapter_file(str(tmp_path))
    assert record.path == path
    assert record.state_dict.keys() == tensors.keys()
    assert all(torch.equal(record.state_dict[k], v)
               for k, v in tensors.items())
    assert record.adapter_configs == configs
    assert record.training == {"step": "4", "base_model": "tiny"}
    bare = read_adapter_file(write_file(tmp_path / "bare.safetensors",
                                        tensors))
    assert (bare.adapter_configs, bare.training) == ({}, {})


def test_training_metadata_is_added_as_strings_keeping_the_rest(tmp_path):
    tensors = {"unet.a.lora_A.weight": torch.arange(8.).reshape(2, 4)}
    path = write_file(tmp_path / "step.safetensors", tensors,
                      **{ADAPTER_METADATA_KEY: "{}", "diffengine.step": "1"})
    add_training_metadata(path, {"step": 6, "dataset": "shapes"})
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {ADAPTER_METADATA_KEY: "{}",
                                "diffengine.step": "6",
                                "diffengine.dataset": "shapes"}
        assert torch.equal(f.get_tensor("unet.a.lora_A.weight"),
                           tensors["unet.a.lora_A.weight"])


def test_base_model_is_the_given_one_else_the_recorded_one(tmp_path):
    # a given base needs no file
    assert base_model(str(tmp_path / "absent"), "given") == "given"
    tensors = {"unet.a.lora_A.weight": torch.zeros(2, 4)}
    recorded = write_file(tmp_path / "recorded.safetensors", tensors,
                          **{"diffengine.base_model": "tiny-sd"})
    assert base_model(recorded) == "tiny-sd"
    unrecorded = write_file(tmp_path / "unrecorded.safetensors", tensors)
    with pytest.raises(ConfigError) as error:
        base_model(unrecorded)
    assert str(error.value) == (
        f"{unrecorded!r} does not record its base model; pass --base.")


def test_rank_and_alpha_come_from_the_config_of_each_kind():
    record = AdapterFile("memory", {}, {
        "unet": {"peft_type": "LORA", "r": 8, "lora_alpha": 4},
        "text_encoder": {"peft_type": "LOHA", "r": 2, "alpha": 3}})
    assert [record.kind(p).name for p in ("unet", "text_encoder")] == [
        "LoRA", "LoHa"]
    assert (record.rank("unet"), record.alpha("unet")) == (8, 4.0)
    assert (record.rank("text_encoder"), record.alpha("text_encoder")) == (
        2, 3.0)


def test_without_a_config_the_largest_down_projection_is_rank_and_alpha():
    record = AdapterFile("memory", {
        "unet.a.lora_A.weight": torch.zeros(3, 8),
        "unet.a.lora_B.weight": torch.zeros(8, 3),
        # diffusers' older names count too
        "unet.b.lora.down.weight": torch.zeros(5, 8),
        "unet.b.lora.up.weight": torch.zeros(8, 5),
        "text_encoder.c.lora_A.weight": torch.zeros(7, 8)})
    assert record.parts == ["unet", "text_encoder"]
    assert not record.is_kohya
    assert record.kind("unet").name == "LoRA"
    assert (record.rank("unet"), record.alpha("unet")) == (5, 5.0)
    assert record.rank("text_encoder") == 7


def test_a_part_without_a_config_takes_the_kind_its_tensors_show():
    record = AdapterFile("memory", {
        "unet.a.hada_w1_a": torch.zeros(2, 4),
        "text_encoder.b.lora_A.weight": torch.zeros(2, 4),
        "text_encoder.b.lora_magnitude_vector": torch.zeros(4)})
    assert record.kind("unet").name == "LoHa"
    assert record.kind("text_encoder").name == "DoRA"


def test_kohya_files_take_their_parts_from_the_configs_and_their_loader():
    lora = AdapterFile("kohya.safetensors", {
        "lora_unet_a.lora_down.weight": torch.zeros(2, 4),
        "lora_unet_a.lora_up.weight": torch.zeros(4, 2),
        "lora_unet_a.alpha": torch.tensor(2.)},
        {"unet": {"peft_type": "LORA", "r": 2, "lora_alpha": 2}})
    assert lora.is_kohya and lora.parts == ["unet"]
    assert lora.weight_name == DIFFUSERS_WEIGHT_NAME
    loha = AdapterFile("kohya.safetensors", {
        "lora_unet_a.hada_w1_a": torch.zeros(2, 4),
        "lora_te_b.lora_down.weight": torch.zeros(2, 4)})
    assert loha.is_kohya and loha.weight_name == LYCORIS_WEIGHT_NAME
    assert not AdapterFile("empty", {}).is_kohya
