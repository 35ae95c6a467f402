"""A digest of module weights, for the keys of cached outputs."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


def weights_fingerprint(*modules: nn.Module) -> str:
    """SHA-256 (hex) of the names, dtypes, shapes and values of the weights.

    Outputs cached under a key that includes it are recomputed as soon as a
    weight, or the dtype the module is kept in, changes.
    """
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            header = [name, str(tensor.dtype), list(tensor.shape)]
            digest.update(json.dumps(header).encode())
            data = tensor.detach().cpu().contiguous().view(-1)
            # raw bytes: numpy has no bfloat16
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
