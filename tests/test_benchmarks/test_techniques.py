"""The technique harness trains a leaf through mim and measures it."""
import os

from benchmarks.techniques import main, technique_configs
from tests.conftest import REPO


def test_every_technique_family_has_a_leaf():
    families = {os.path.basename(os.path.dirname(p))
                for p in technique_configs()}
    assert families == {"min_snr_loss", "debias_estimation_loss", "huber_loss",
                        "offset_noise", "pyramid_noise", "timesteps_bias",
                        "input_perturbation", "caption_tricks", "ema"}


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
