"""Atomic writes: the old file or folder, or the new one, never half."""
import os

import pytest
import torch
from safetensors.torch import save_file

from diffengine.fileio import atomic_directory, atomic_write


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "step2"
    with atomic_directory(str(target)) as tmp:
        (open(os.path.join(tmp, "a"), "w")).close()
    assert os.listdir(target) == ["a"]
    with pytest.raises(RuntimeError), atomic_directory(str(target)) as tmp:
        (open(os.path.join(tmp, "b"), "w")).close()
        raise RuntimeError("killed mid-save")
    assert os.listdir(target) == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["step2"]


def test_written_files_are_readable_as_plain_files_are(tmp_path):
    # safetensors' save_file makes its files 0600: a UI running as another
    # user could not read a step folder, an export or a merged model
    open(tmp_path / "plain", "w").close()
    plain = os.stat(tmp_path / "plain").st_mode & 0o777
    assert plain != 0o600  # the umask here lets others read (as 022 does)
    out = str(tmp_path / "lora.safetensors")
    atomic_write(out, lambda tmp: save_file({"a": torch.zeros(1)}, tmp))
    assert os.stat(out).st_mode & 0o777 == plain
    with atomic_directory(str(tmp_path / "step2")) as tmp:
        os.makedirs(os.path.join(tmp, "unet"))
        save_file({"a": torch.zeros(1)},
                  os.path.join(tmp, "unet", "weights.safetensors"))
    assert os.stat(tmp_path / "step2" / "unet" /
                   "weights.safetensors").st_mode & 0o777 == plain
