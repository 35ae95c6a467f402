"""The names written before the demo, the tiny-model makers and the
``generate`` tool moved still work: ``from diffengine.demo import
make_tiny_sd``, ``diffengine.demo_base``, ``mim run diffengine demo`` /
``python tools/demo.py`` and the README's ``python tools/make_demo.py``."""
import json
import os
import subprocess
import sys

import pytest

import diffengine.demo
import diffengine.testing
from tests.conftest import REPO


def test_the_makers_import_from_diffengine_demo_as_before():
    from diffengine.demo import (
        SD15_UNET_CONFIG,
        make_sd15_shaped,
        make_tiny_sd,
        write_char_tokenizer,
    )

    assert make_tiny_sd is diffengine.testing.make_tiny_sd
    assert make_sd15_shaped is diffengine.testing.make_sd15_shaped
    assert write_char_tokenizer is diffengine.testing.write_char_tokenizer
    assert SD15_UNET_CONFIG is diffengine.testing.SD15_UNET_CONFIG
    with pytest.raises(AttributeError, match="no attribute 'make_tiny'"):
        diffengine.demo.make_tiny  # noqa: B018


def test_diffengine_demo_base_names_are_the_demos():
    import diffengine.demo_base

    for name in diffengine.demo_base.__all__:
        assert getattr(diffengine.demo_base, name) is getattr(
            diffengine.demo, name)
    assert os.path.isfile(
        os.path.join(diffengine.demo_base.WEIGHTS, "model_index.json"))


def test_the_scorer_registry_finds_the_demos_scorer():
    from diffengine.registry import SCORERS

    assert SCORERS.get("ShapeScorer") is diffengine.demo.ShapeScorer


def test_the_demo_tool_is_generate():
    from diffengine.tools import demo, generate

    assert demo.main is generate.main
    result = subprocess.run(
        [sys.executable, os.path.join("tools", "demo.py"), "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Generate images with a trained LoRA" in result.stdout


def test_make_demo_writes_the_base_and_the_concept(tmp_path):
    make_demo = os.path.join(REPO, "tools", "make_demo.py")
    subprocess.run([sys.executable, make_demo, "--num-images", "3"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    model = tmp_path / "data" / "demo" / "tiny-sd"
    with open(model / "model_index.json") as f:
        assert json.load(f)["_class_name"] == "StableDiffusionPipeline"
    rows = (tmp_path / "data" / "demo" / "zorbs" / "metadata.jsonl"
            ).read_text().splitlines()
    assert len(rows) == 3 and "zorb" in json.loads(rows[0])["text"]


def test_export_lora_imports_from_diffengine_export_as_before():
    from diffengine.export import export_lora
    from diffengine.export.standalone_lora import export_lora as exporter

    assert export_lora is exporter
