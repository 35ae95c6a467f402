"""Atomic writes: the old file or folder, or the new one, never half."""
import os

import pytest

from diffengine.fileio import atomic_directory


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
