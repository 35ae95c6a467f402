"""Independent oracles: what other programs read, rebuilt for the tests.

Tests of exported files check them against these modules, not against
diffengine's own exporter, so that a mistake in the exporter cannot
also be the expectation. Each is written from the behaviour of the program
it stands for (its loaders and model definitions, cited in its
docstring), and none imports diffengine's name maps or merge arithmetic:

- :mod:`tests.oracles.comfyui_keys`: the kohya LoRA names ComfyUI accepts
  for SD 1.x, SDXL, SD3 and Flux.1 (``comfy/lora.py``), and the diffusers →
  ldm / MMDiT / Flux module names behind them (``comfy/utils.py``).
- :mod:`tests.oracles.comfyui_weights`: the weight ComfyUI makes of one
  kohya or LyCORIS module (LoRA, LoHa, LoKr, DoRA; ``comfy/weight_adapter``).
  It groups a file's keys by module with diffengine's ``kohya_modules``,
  which only splits each key at its first dot.
- :mod:`tests.oracles.original_layout`: what an original (CompVis ldm /
  Stability AI ``sgm``) SD 1.x and SDXL checkpoint holds, what ComfyUI's
  diffusers loader reads of a text encoder, and a diffusers SD3 or Flux.1
  transformer's weights under their original (MMDiT, BFL) names.

They are helpers, not tests: pytest collects nothing here.
"""
