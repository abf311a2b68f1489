"""Model registry: one folder per model with weights and a model card (``model.json``).

Shipped models live in ``CardiacAISeg/Resources/Models``; models a user imports go to the user
folder (``$CARDIACAISEG_MODELS`` or ``~/.cardiacaiseg/models``) and are selected the same way.
Weights are verified by sha256 before use, so a corrupted or swapped file is never run.
"""
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CardiacInputError

CARD_NAME = "model.json"
REQUIRED_KEYS = ("name", "title", "task", "classes", "input", "weights", "licence")
WEIGHT_FORMATS = ("state_dict", "torchscript", "onnx")
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"


def user_models_dir():
    return Path(os.environ.get("CARDIACAISEG_MODELS", Path.home() / ".cardiacaiseg" / "models"))


def model_dirs():
    return [SHIPPED_DIR, user_models_dir()]


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def validate_card(card, path):
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise CardiacInputError(path, f"model card lacks {', '.join(missing)}")
    if card["task"] not in ("cine", "perfusion"):
        raise CardiacInputError(path, f"task must be 'cine' or 'perfusion', not {card['task']!r}")
    w = card["weights"]
    if not isinstance(w, dict) or not {"file", "sha256", "format"} <= set(w):
        raise CardiacInputError(path, "weights must give file, sha256 and format")
    if w["format"] not in WEIGHT_FORMATS:
        raise CardiacInputError(path, f"weights format {w['format']!r} is not one of {WEIGHT_FORMATS}")
    if w["format"] == "state_dict" and "architecture" not in card:
        raise CardiacInputError(path, "a state_dict model needs an 'architecture' entry (name, params)")
    if "pixel_mm" not in card["input"]:
        raise CardiacInputError(path, "input spec lacks pixel_mm")
    return card


def read_card(folder):
    path = Path(folder) / CARD_NAME
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise CardiacInputError(path, "model card not found")
    except json.JSONDecodeError as e:
        raise CardiacInputError(path, f"model card is not valid JSON ({e})")
    card = validate_card(card, path)
    card["_folder"] = str(Path(folder))
    return card


def list_models(task=None):
    """Cards of every valid model, shipped first; a broken user model is skipped, not fatal."""
    cards, seen = [], set()
    for root in model_dirs():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
            try:
                card = read_card(folder)
            except CardiacInputError:
                continue
            if card["name"] in seen or (task and card["task"] != task):
                continue
            seen.add(card["name"])
            cards.append(card)
    return cards


def get_card(name):
    for card in list_models():
        if card["name"] == name:
            return card
    known = ", ".join(c["name"] for c in list_models()) or "none"
    raise CardiacInputError(name, f"no such model; installed models: {known}")


def default_model(task="cine"):
    cards = [c for c in list_models(task) if c.get("default")]
    if cards:
        return cards[0]["name"]
    cards = list_models(task)
    if not cards:
        raise CardiacInputError(task, f"no {task} model is installed")
    return cards[0]["name"]


@dataclass
class LoadedModel:
    card: dict
    module: object  # torch.nn.Module (or an ONNX wrapper with the same call)

    @property
    def name(self):
        return self.card["name"]


def weights_path(card):
    return Path(card["_folder"]) / card["weights"]["file"]


def verify_weights(card):
    path = weights_path(card)
    if not path.is_file():
        raise CardiacInputError(path, f"weights of model {card['name']!r} are missing")
    digest = sha256_of(path)
    if digest != card["weights"]["sha256"]:
        raise CardiacInputError(path, f"sha256 mismatch for model {card['name']!r}: file {digest[:12]}…, card {card['weights']['sha256'][:12]}…; the file is corrupt or not the one the card describes")
    return path


_CACHE = {}


def load_model(name, verify=True):
    """Build and load a model by name (cached per process; weights verified on first load)."""
    import torch

    card = get_card(name)
    key = (card["_folder"], card["weights"]["sha256"])
    if key in _CACHE:
        return _CACHE[key]
    path = verify_weights(card) if verify else weights_path(card)
    fmt = card["weights"]["format"]
    if fmt == "state_dict":
        from .architectures import build

        module = build(card["architecture"]["name"], **card["architecture"].get("params", {}))
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        from .onnx_module import OnnxModule

        module = OnnxModule(path)
    module.eval()
    loaded = LoadedModel(card, module)
    _CACHE[key] = loaded
    return loaded


def import_model(weights, card_path, dest=None, overwrite=False):
    """Install a user's TorchScript/ONNX (or state_dict) model with its card into the user folder.

    The card's sha256 must match the weights file; the copy is assembled in a temporary folder
    and moved into place, so a failed import leaves nothing behind.
    """
    weights, card_path = Path(weights), Path(card_path)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CardiacInputError(card_path, f"cannot read model card ({e})")
    validate_card(card, card_path)
    if not weights.is_file():
        raise CardiacInputError(weights, "weights file not found")
    if sha256_of(weights) != card["weights"]["sha256"]:
        raise CardiacInputError(weights, "sha256 of the weights does not match the model card")
    dest_root = Path(dest) if dest else user_models_dir()
    target = dest_root / card["name"]
    if target.exists() and not overwrite:
        raise CardiacInputError(target, "a model with this name is already installed; pass overwrite=True to replace it")
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=dest_root))
    try:
        card["weights"]["file"] = weights.name
        shutil.copy2(weights, tmp / weights.name)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return read_card(target)
