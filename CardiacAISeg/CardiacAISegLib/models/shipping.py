"""Write a trained network into the registry layout: weights + model card with sha256."""
import json
import os
from pathlib import Path

from .registry import CARD_NAME, SHIPPED_DIR, sha256_of

WEIGHTS_NAME = "weights.pt"


def ship_model(state_dict, card, dest_root=None, overwrite=False):
    """Save ``state_dict`` and ``card`` (without the weights entry) as ``<dest_root>/<name>/``."""
    import torch

    folder = Path(dest_root or SHIPPED_DIR) / card["name"]
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True to replace the shipped model")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp)
    os.replace(tmp, folder / WEIGHTS_NAME)
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_NAME, "format": "state_dict", "sha256": sha256_of(folder / WEIGHTS_NAME),
                       "bytes": (folder / WEIGHTS_NAME).stat().st_size}
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    return folder
