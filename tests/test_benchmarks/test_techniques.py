"""The technique harness trains a leaf through mim and measures it."""
import os

from benchmarks.techniques import TECHNIQUES, main, technique_configs
from tests.conftest import REPO


def test_every_technique_family_has_a_leaf_on_the_seed_config():
    leaves = technique_configs()
    assert {os.path.basename(os.path.dirname(p)) for p in leaves} == set(
        TECHNIQUES)
    for leaf in leaves:
        with open(leaf) as f:
            assert ('_base_ = ["../stable_diffusion_lora/'
                    'stable_diffusion_v15_lora_pokemon_blip.py"]') in f.read()


def test_an_ema_leaf_trains_and_its_step_folder_is_the_average(
        tmp_path, tiny_sd, shapes_data, capsys):
    leaf = os.path.join(REPO, "configs", "ema",
                        "stable_diffusion_v15_lora_ema_pokemon_blip.py")
    row, = main(["--model", tiny_sd, "--data", shapes_data, "--epochs", "1",
                 "--configs", leaf, "--work-dir", str(tmp_path)])
    assert row["config"] == os.path.join(
        "ema", "stable_diffusion_v15_lora_ema_pokemon_blip.py")
    assert row["steps"] == 6
    # the step folder holds what the checkpoint calls the model: the average
    assert row["reload_max_abs_diff"] <= 1e-5
    assert row["loss_before"] > 0 and row["loss_after"] > 0
    assert "| ema/stable_diffusion_v15_lora_ema_pokemon_blip.py | 6 |" in (
        capsys.readouterr().out)
