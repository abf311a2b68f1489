"""Model registry: one folder per model with weights and a model card (``model.json``).

Shipped models live in ``CardiacAISeg/Resources/Models``; models a user imports go to the user
folder (``$CARDIACAISEG_MODELS`` or ``~/.cardiacaiseg/models``) and are selected the same way.
Weights are verified by sha256 before use, so a corrupted or swapped file is never run.

Importing a model is a security boundary: the card comes from outside. Its name must be a
plain slug (it becomes a folder name), nothing is written outside the user folder, an existing
model is replaced only on request and only if it holds nothing but a model's files, a shipped
model's name cannot be reused, and the network must load and give (batch, 4 classes, rows, cols)
on a small test input before anything is installed.
"""
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CardiacInputError

CARD_NAME = "model.json"
REQUIRED_KEYS = ("name", "title", "task", "classes", "input", "weights", "licence")
WEIGHT_FORMATS = ("state_dict", "torchscript", "onnx")
TASKS = ("cine", "perfusion")
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
# A model name becomes a folder name: lower-case letters, digits, '.', '_' and '-', starting
# with a letter or digit, at most 64 characters ('..' and slashes can never pass).
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Output channel i of every network is internal label i (labels.py): the card must say so.
INTERNAL_CLASSES = ["background", "LV blood pool", "LV myocardium", "RV"]
DEFAULT_WEIGHT_FILES = {"state_dict": "weights.pt", "torchscript": "weights.ts", "onnx": "weights.onnx"}
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_CLASH_RULE = "a shipped model's name cannot be reused: import-model refuses it, and a user folder with that name is not used"


def user_models_dir():
    return Path(os.environ.get("CARDIACAISEG_MODELS", Path.home() / ".cardiacaiseg" / "models"))


def model_dirs():
    return [SHIPPED_DIR, user_models_dir()]


# sha256 of weights files already read, by the file's identity and state: the Slicer selectors ask
# whether every installed model can run each time they are refreshed, and read all the weights
# (tens of MB) again each time (final read of session 44). A file written since has another
# size, mtime or inode (a replaced file), so it is read again; a file written in the last
# seconds is always read (rewritten within the clock's tick, its mtime need not change: git's
# "racily clean" case).
_DIGESTS = {}
SETTLED_S = 2.0


def sha256_of(path, chunk=1 << 20):
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        key = None   # open() below says what is wrong with the path
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    if key is not None and time.time() - st.st_mtime > SETTLED_S:
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()


def _positive_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_name(name, path):
    if not isinstance(name, str) or not NAME_RULE.match(name) or ".." in name:
        raise CardiacInputError(path, f"model name {name!r} is not allowed: use 1-64 lower-case letters, digits, '.', '_' "
                                "or '-', starting with a letter or digit (no '..', no slashes; it becomes a folder name)")
    return name


def validate_card(card, path):
    """Checks every card passes before its model is listed or run (shipped and user alike)."""
    if not isinstance(card, dict):
        raise CardiacInputError(path, "model card must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise CardiacInputError(path, f"model card lacks {', '.join(missing)}")
    check_name(card["name"], path)
    if card["task"] not in TASKS:
        raise CardiacInputError(path, f"task must be 'cine' or 'perfusion', not {card['task']!r}")
    w = card["weights"]
    if not isinstance(w, dict) or not {"file", "sha256", "format"} <= set(w):
        raise CardiacInputError(path, "weights must give file, sha256 and format")
    if w["format"] not in WEIGHT_FORMATS:
        raise CardiacInputError(path, f"weights format {w['format']!r} is not one of {WEIGHT_FORMATS}")
    # the weights are read from the model's own folder, never from a path the card points to
    if not isinstance(w["file"], str) or not SAFE_FILE_NAME.match(w["file"]) or w["file"] == CARD_NAME:
        raise CardiacInputError(path, f"weights file {w['file']!r} must be a plain file name in the model folder")
    if w["format"] == "state_dict" and not (isinstance(card.get("architecture"), dict) and "name" in card["architecture"]):
        raise CardiacInputError(path, "a state_dict model needs an 'architecture' entry (name, params)")
    if "onnx" in card:
        _validate_onnx_entry(card, path)
    spec = card["input"]
    if not isinstance(spec, dict) or "pixel_mm" not in spec:
        raise CardiacInputError(path, "input spec lacks pixel_mm")
    # Perfusion networks run on the native grid (pixel_mm null); cine networks on a resampled one.
    if not (_positive_number(spec["pixel_mm"]) or (card["task"] == "perfusion" and spec["pixel_mm"] is None)):
        allowed = "a positive number of mm" + (" or null (native grid)" if card["task"] == "perfusion" else "")
        raise CardiacInputError(path, f"input.pixel_mm must be {allowed}, the pixel size the network was trained at; "
                                f"got {spec['pixel_mm']!r}")
    if "heart_crop_mm" in spec:
        # two-stage cine inference on a square of this side around the heart (models/inference.py)
        if card["task"] != "cine":
            raise CardiacInputError(path, "input.heart_crop_mm is for cine networks (two-stage inference around the heart); "
                                    "perfusion networks find the heart from the bolus")
        if not (_positive_number(spec["heart_crop_mm"]) and spec["heart_crop_mm"] >= 64):
            raise CardiacInputError(path, "input.heart_crop_mm must be the side in mm (at least 64) of the square around the heart "
                                    f"the network segments, or absent for whole-field inference; got {spec['heart_crop_mm']!r}")
    return card


def _validate_onnx_entry(card, path):
    """The exported ONNX copy of a torch network: a plain file name in the model folder (neither
    the card nor the torch weights) and the sha256 it is verified against before it runs."""
    entry = card["onnx"]
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
        raise CardiacInputError(path, "onnx must give file and sha256 (the exported copy of the network)")
    name = entry["file"]
    if not isinstance(name, str) or not SAFE_FILE_NAME.match(name) or name in (CARD_NAME, card["weights"]["file"]):
        raise CardiacInputError(path, f"onnx file {name!r} must be a plain file name in the model folder, "
                                "other than the card and the weights")
    if not (isinstance(entry["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
        raise CardiacInputError(path, "onnx.sha256 must be 64 lower-case hex digits (sha256sum of the ONNX file)")


def validate_card_for_import(card, path):
    """The stricter checks of a card from outside: everything the run will rely on."""
    validate_card(card, path)
    if not isinstance(card["title"], str) or not card["title"].strip():
        raise CardiacInputError(path, "title must be a non-empty text")
    if not isinstance(card["licence"], str) or not card["licence"].strip():
        raise CardiacInputError(path, "licence must be a non-empty text (the terms the weights are under)")
    if card["classes"] != INTERNAL_CLASSES:
        raise CardiacInputError(path, f"classes must be {INTERNAL_CLASSES} in this order (output channel i is label i), "
                                f"not {card['classes']!r}")
    sha = card["weights"]["sha256"]
    if isinstance(sha, str):
        # PowerShell's Get-FileHash prints it in capitals: the same digest (probe 80)
        sha = card["weights"]["sha256"] = sha.strip().lower()
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise CardiacInputError(path, "weights.sha256 must be 64 hex digits (sha256sum of the weights file)")
    spec = card["input"]
    if "size_multiple" in spec and not _positive_int(spec["size_multiple"]):
        raise CardiacInputError(path, f"input.size_multiple must be a positive whole number, not {spec['size_multiple']!r}")
    if card["task"] == "perfusion" and "frames" in spec and not _positive_int(spec["frames"]):
        raise CardiacInputError(path, f"input.frames must be the number of frames the network takes, not {spec['frames']!r}")
    if card["task"] == "cine" and "context_slices" in spec and not (_positive_int(spec["context_slices"]) or spec["context_slices"] == 0):
        raise CardiacInputError(path, "input.context_slices must be the neighbouring slices on each side a 2.5D network reads "
                                f"(0, 1, ...), not {spec['context_slices']!r}")
    from .inference import TTA_NAMES

    # cine and perfusion networks alike ("oriented" readings take the heart's axis from the bolus
    # or from the two-stage first pass, and read the 8 orientations without one)
    if spec.get("tta", "none") not in TTA_NAMES:
        raise CardiacInputError(path, f"input.tta must be one of {', '.join(repr(n) for n in TTA_NAMES)}, not {spec['tta']!r}")
    if card["task"] == "perfusion" and spec["pixel_mm"] is not None:
        # the engine runs perfusion networks on the series' own grid (cropped, not resampled): a
        # number was accepted and ignored (probe 95)
        raise CardiacInputError(path, f"input.pixel_mm of a perfusion network must be null, got {spec['pixel_mm']!r}: the "
                                "engine feeds perfusion networks the series on its own grid (around the heart), not "
                                "resampled; a network trained at one pixel size is not supported")
    if card["task"] == "perfusion" and "pre_foot_frames" in spec:
        frames = spec.get("frames", 48)
        value = spec["pre_foot_frames"]
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < frames):
            # "3" imported, then every analysis ended in a TypeError (probe 95)
            raise CardiacInputError(path, f"input.pre_foot_frames must be a whole number from 0 to {frames - 1} (the frames "
                                    f"before the AIF's foot the network's window starts), not {value!r}")
    metrics = card.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise CardiacInputError(path, f"metrics must be an object of measured numbers, not {metrics!r}")
        for key, value in metrics.items():
            # Dice values are listed and compared as numbers ("0.93" imported, then `cardiacaiseg
            # models` stopped on it; probe 95); other entries may annotate (a mode, a range)
            if key.startswith("dice_") and value is not None and (isinstance(value, bool) or
                                                                  not isinstance(value, (int, float))):
                raise CardiacInputError(path, f"metrics.{key} must be a number (or null), not {value!r}")
    arch = card.get("architecture")
    if card["weights"]["format"] == "state_dict" and not isinstance(arch.get("params", {}), dict):
        raise CardiacInputError(path, "architecture.params must be an object of keyword arguments")
    _check_card_against_the_engine(card, path)
    return card


# What the engine feeds every network of a task (models/preprocess.normalise_volume for cine,
# models/perfusion_segmentation for perfusion); a card saying otherwise describes a network that
# may read other numbers than it gets: such cards were imported without a word (a network trained
# on z-scored slices gave EF 28 % for 24 %, one on raw 0-255 found no LV; probe round 15).
ENGINE_NORMALISATION = {"cine": "per volume: 1st-99.5th percentile -> [0, 1], clipped",
                        "perfusion": "each series divided by its maximum"}
# Cardiac MR in-plane pixels: 0.6-3 mm; a card's pixel_mm far outside is a typo (12.5 for 1.25)
PIXEL_MM_RANGE = (0.3, 5.0)


def import_notes(card):
    """What an import should tell the user about ``card`` that does not stop it: a normalisation
    the card describes in other words than the engine's (free text: the same scheme may be worded
    otherwise, so it is said, not refused; a network trained on z-scored or raw 0-255 images
    segments wrongly, or finds no LV, with what the engine feeds it)."""
    notes = []
    check = card.get("import_check")
    if check and not check.get("agrees", True):
        notes.append(f"{sample_agreement_text(check)}: check the card's input.pixel_mm ({card['input'].get('pixel_mm')} mm), "
                     "the intensity normalisation the network was trained with and its class order; every analysis "
                     "with it is flagged for review (MODEL_DISAGREES_ON_SAMPLE)")
    said = card["input"].get("normalisation")
    engine = ENGINE_NORMALISATION[card["task"]]
    if said is None or " ".join(str(said).lower().split()) == engine:
        return notes
    return notes + [f"input.normalisation says {said!r}; the engine feeds every {card['task']} network images normalised "
                    f"'{engine}': if the network was trained on other numbers it will segment wrongly (wrap it to take these)"]


def _check_card_against_the_engine(card, path):
    """Refuse an imported card that describes a network the engine cannot feed as it needs."""
    spec, task = card["input"], card["task"]
    low, high = PIXEL_MM_RANGE
    if spec["pixel_mm"] is not None and not low <= float(spec["pixel_mm"]) <= high:
        raise CardiacInputError(path, f"input.pixel_mm {spec['pixel_mm']} mm is outside {low:g}-{high:g} mm, the in-plane "
                                "pixel sizes of cardiac MR: the pixel size the network was trained at, in mm")
    channels = spec.get("channels")
    expected = 1 + 2 * int(spec.get("context_slices", 0) or 0) if task == "cine" else spec.get("frames", 48)
    if channels is not None and channels != expected:
        raise CardiacInputError(path, f"input.channels {channels!r}: the engine feeds this {task} network {expected} "
                                + ("(one slice and input.context_slices neighbours on each side)" if task == "cine"
                                   else "(input.frames)"))
    if card.get("default"):
        raise CardiacInputError(path, "'default': true: the shipped default model stays the default (two defaults were "
                                "listed); leave the field out and choose this model by name (--model, or the model selector)")
    if task == "perfusion":
        from .perfusion_segmentation import perfusion_segmentation

        declared = perfusion_segmentation(dict(card, name=str(path)))   # mode, key image, cine_tta: checked
        if declared["mode"] != "frames":
            names = declared["cine_model"] if isinstance(declared["cine_model"], list) else [declared["cine_model"]]
            installed = {c["name"]: c for c in list_models()}
            for name in names:
                if name is None:
                    continue
                if name not in installed:
                    raise CardiacInputError(path, f"input.segmentation.cine_model {name!r} is not installed (models: "
                                            f"{', '.join(sorted(installed))}); import it first, or use mode 'frames'")
                if installed[name]["task"] != "cine":
                    raise CardiacInputError(path, f"input.segmentation.cine_model {name!r} is a {installed[name]['task']} "
                                            "model; the key-image path reads a cine network")


def read_card(folder):
    path = Path(folder) / CARD_NAME
    try:
        card = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise CardiacInputError(path, "model card not found")
    except (OSError, UnicodeDecodeError) as e:
        raise CardiacInputError(path, f"cannot read the model card ({e})")
    except json.JSONDecodeError as e:
        raise CardiacInputError(path, f"model card is not valid JSON ({e})")
    card = validate_card(card, path)
    card["_folder"] = str(Path(folder))
    return card


def _same_folder(a, b):
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def scan_models():
    """(cards, skipped): the usable models, shipped first, each card with ``_source`` 'shipped'
    or 'user'; ``skipped`` lists (folder, reason) for model folders that are not used.

    A folder is used under its card's name only if the folder has that name, and a name is
    taken once: shipped models come first, so a user folder with a shipped name is skipped
    (and reported), never silently shadowed.
    """
    cards, skipped, owner = [], [], {}
    for root in model_dirs():
        root = Path(root)
        if not root.is_dir():
            continue
        source = "shipped" if _same_folder(root, SHIPPED_DIR) else "user"
        # names starting with '.' are import staging folders
        for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / CARD_NAME).is_file()):
            try:
                card = read_card(folder)
            except CardiacInputError as e:
                skipped.append((folder, e.problem))
                continue
            name = card["name"]
            if name != folder.name:
                skipped.append((folder, f"its card names the model {name!r}, not the folder's name {folder.name!r}"))
                continue
            if name in owner:
                skipped.append((folder, f"name {name!r} is taken by the {owner[name]} model; {NAME_CLASH_RULE}"))
                continue
            owner[name] = source
            card["_source"] = source
            cards.append(card)
    return cards, skipped


def list_models(task=None):
    """Cards of every usable model, shipped first; a broken user model is skipped, not fatal."""
    return [c for c in scan_models()[0] if not task or c["task"] == task]


def shipped_names():
    if not SHIPPED_DIR.is_dir():
        return set()
    return {p.name for p in SHIPPED_DIR.iterdir() if (p / CARD_NAME).is_file()}


def get_card(name):
    cards, skipped = scan_models()
    for card in cards:
        if card["name"] == name:
            return card
    for folder, reason in skipped:
        if folder.name == name:
            # a user folder of that name that is not used: why (its card not valid JSON was "no such
            # model", though `cardiacaiseg models` said why; probe 74)
            raise CardiacInputError(folder / CARD_NAME, f"model {name!r} is not used: {reason}")
    known = ", ".join(c["name"] for c in cards) or "none"
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
    module: object  # torch.nn.Module, or an OnnxModule (run_numpy, and callable like a module)
    runtime: str = "torch"  # "torch" or "onnxruntime"
    # models the card declares it runs with: {"cine": [LoadedModel, ...]} for a perfusion card
    # whose input.segmentation.mode uses cine networks on key images (models/perfusion_keyimage.py)
    companions: dict = field(default_factory=dict)

    @property
    def name(self):
        return self.card["name"]


RUNTIME_ENV = "CARDIACAISEG_RUNTIME"
RUNTIMES = {"auto": "auto", "torch": "torch", "onnxruntime": "onnxruntime", "onnx": "onnxruntime", "ort": "onnxruntime"}


def weights_path(card):
    return Path(card["_folder"]) / card["weights"]["file"]


def onnx_path(card):
    return Path(card["_folder"]) / card["onnx"]["file"]


def verify_weights(card):
    path = weights_path(card)
    if not path.is_file():
        raise CardiacInputError(path, f"weights of model {card['name']!r} are missing")
    digest = sha256_of(path)
    if digest != card["weights"]["sha256"]:
        raise CardiacInputError(path, f"sha256 mismatch for model {card['name']!r}: file {digest[:12]}…, card {card['weights']['sha256'][:12]}…; the file is corrupt or not the one the card describes")
    return path


def verify_onnx(card):
    """The exported ONNX file of ``card``, checked against the card's sha256 like the weights: a
    swapped or damaged export is refused, never run (and never silently replaced by torch)."""
    path = onnx_path(card)
    if not path.is_file():
        raise CardiacInputError(path, f"the ONNX export of model {card['name']!r} is missing (the card lists it); "
                                f"re-export it (python tools/export_onnx.py {card['name']}) or run with {RUNTIME_ENV}=torch")
    digest = sha256_of(path)
    if digest != card["onnx"]["sha256"]:
        raise CardiacInputError(path, f"sha256 mismatch for the ONNX export of model {card['name']!r}: file {digest[:12]}…, "
                                f"card {card['onnx']['sha256'][:12]}…; the file is corrupt or not the one the card describes")
    return path


def _onnxruntime_available():
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def requested_runtime(runtime=None):
    """'auto', 'torch' or 'onnxruntime': the ``runtime`` argument, else ``$CARDIACAISEG_RUNTIME``, else auto."""
    source = "runtime" if runtime else RUNTIME_ENV
    value = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    key = str(value).strip().lower()
    if key not in RUNTIMES:
        raise CardiacInputError(source, f"unknown inference runtime {value!r}; use auto, torch or onnxruntime")
    return RUNTIMES[key]


def choose_runtime(card, runtime=None, device=None):
    """Which runtime runs ``card``'s network: 'onnxruntime' or 'torch'.

    auto (the default): ONNX Runtime on the CPU when the card ships an ONNX export and
    onnxruntime is installed (2-3x faster than torch eager here, and torch is never imported);
    torch for a CUDA/MPS device, for a model without an export, or when a usable CUDA GPU is found.
    A model imported as ONNX has no torch form and always runs on ONNX Runtime.
    """
    if card["weights"]["format"] == "onnx":
        return "onnxruntime"
    wanted = requested_runtime(runtime)
    if wanted == "torch":
        return "torch"
    if wanted == "onnxruntime":
        if "onnx" not in card:
            raise CardiacInputError(card["name"], "this model has no ONNX export (its card lists no 'onnx' file); "
                                    f"run it with torch ({RUNTIME_ENV}=torch) or export it (tools/export_onnx.py)")
        if not _onnxruntime_available():
            raise CardiacInputError(RUNTIME_ENV, "onnxruntime is asked for but not installed (pip install onnxruntime)")
        return "onnxruntime"
    if "onnx" not in card or not _onnxruntime_available():
        return "torch"
    if device is not None and str(device) != "cpu":
        return "torch"
    if device is None:
        from .inference import pick_device

        if str(pick_device()) != "cpu":
            return "torch"
    return "onnxruntime"


def _onnx_module(card, path):
    """An ONNX Runtime module for ``card``'s network; a 2.5D cine network's neighbouring slices
    come from the card (an ONNX file does not say what its input channels mean)."""
    from .inference import OnnxModule

    module = OnnxModule(path)
    if card.get("task") == "cine":
        module.context_slices = int(card["input"].get("context_slices", 0))
    return module


def _build_module(card, path):
    """The network of ``card`` with the weights at ``path``, in eval mode on the CPU."""
    fmt = card["weights"]["format"]
    if fmt == "onnx":
        return _onnx_module(card, path)
    import torch

    if os.environ.get("CARDIACAISEG_THREADS"):
        # the share of the cores a cohort worker or the user set, as ONNX Runtime sessions take it
        from .inference import cpu_threads

        torch.set_num_threads(cpu_threads())

    if fmt == "state_dict":
        from .architectures import build

        module = build(card["architecture"]["name"], **card["architecture"].get("params", {}))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and {"model", "optimizer"} <= set(state):
            # a training run's resumable state: torch's 'Unexpected key(s) "model", "optimizer"'
            # left the user guessing (probe 95)
            raise CardiacInputError(path, "is a training run's resumable state (last.pt: weights, optimiser, scheduler), "
                                          "not the network's weights: import the run's best.pt")
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            if "size mismatch" not in str(e) and "Missing key" not in str(e) and "Unexpected key" not in str(e):
                raise
            # weights of another width or depth than the card's architecture.params build (probe 95)
            raise CardiacInputError(path, f"the weights do not fit the network the card builds ({card['architecture']['name']} "
                                          f"with architecture.params {card['architecture'].get('params', {})}): give the "
                                          "params it was trained with (a training run's --params) — "
                                          f"{_one_line(e)[:300]}") from None
    else:
        module = torch.jit.load(str(path), map_location="cpu")
        declared = int(card["input"].get("context_slices") or 0) if card.get("task") == "cine" else None
        if declared is not None and "context_slices" in card["input"] and getattr(module, "context_slices", None) != declared:
            # a TorchScript file does not say what its input channels mean either: a 2.5D network
            # was fed one channel and refused, against its card (probe 65)
            try:
                module.context_slices = declared
            except RuntimeError as e:   # a scripted Final constant of another value
                raise CardiacInputError(path, f"the network fixes context_slices itself, otherwise than its card's "
                                        f"input.context_slices {declared} ({_one_line(e)}); make them agree") from None
    module.eval()
    return module


_CACHE = {}


def load_model(name, verify=True, runtime=None, device=None):
    """Build and load a model by name (cached per process; files verified on first load), with
    the companion models its card declares (``LoadedModel.companions``).

    ``runtime`` ('auto', 'torch', 'onnxruntime'; default ``$CARDIACAISEG_RUNTIME`` or auto) and
    ``device`` decide which runtime runs it (``choose_runtime``).
    """
    card = get_card(name)
    chosen = choose_runtime(card, runtime, device)
    if runs_export(card, chosen):
        key = (card["_folder"], card["onnx"]["sha256"], chosen)
        if key not in _CACHE:
            path = verify_runnable(card, chosen) if verify else onnx_path(card)
            _CACHE[key] = LoadedModel(card, _onnx_module(card, path), chosen, _companions(card, device))
        return _CACHE[key]
    key = (card["_folder"], card["weights"]["sha256"], chosen)
    if key not in _CACHE:
        path = verify_runnable(card, chosen) if verify else weights_path(card)
        _CACHE[key] = LoadedModel(card, _build_module(card, path), chosen, _companions(card, device))
    return _CACHE[key]


def runs_export(card, runtime):
    """True when ``runtime`` runs the card's ONNX export rather than its weights file."""
    return runtime == "onnxruntime" and card["weights"]["format"] != "onnx"


def verify_runnable(card, runtime=None):
    """The file ``runtime`` (default: ``choose_runtime``'s) loads for ``card``, checked by sha256:
    what ``load_model`` runs, and what `cardiacaiseg models` reports on."""
    runtime = runtime or choose_runtime(card)
    return verify_onnx(card) if runs_export(card, runtime) else verify_weights(card)


def runnable_problem(card):
    """Why the model of ``card`` cannot run here, or None: the file its runtime loads missing or
    not the card's (``verify_runnable``), or a cine network its card segments key images with
    missing or broken. `models`, the selectors and `batch` say it before a run, not each study
    after (probe 95: a perfusion ensemble whose cine member was gone was listed as usable)."""
    try:
        verify_runnable(card)
        declared = (card.get("input") or {}).get("segmentation") or {}
        if card.get("task") == "perfusion" and declared.get("mode") in CINE_KEY_IMAGE_MODES:
            names = declared.get("cine_model")
            for name in (names if isinstance(names, list) else [names]):
                member = get_card(name) if name is not None else get_card(default_model("cine"))
                problem = runnable_problem(member)
                if problem:
                    return f"its cine network {member['name']!r} cannot run: {problem}"
    except CardiacInputError as e:
        return str(e)
    return None


# perfusion segmentation modes that run the cine network on key images of the first pass
CINE_KEY_IMAGE_MODES = ("cine-key-image", "ensemble")


def _companions(card, device):
    declared = card.get("input", {}).get("segmentation") or {}
    if card.get("task") != "perfusion" or declared.get("mode") not in CINE_KEY_IMAGE_MODES:
        return {}
    # one cine network, or several whose probabilities the ensemble averages (a list in the card)
    names = declared.get("cine_model")
    names = names if isinstance(names, list) else [names]
    return {"cine": [load_key_image_cine_model(name, device or "cpu", classes=card.get("classes")) for name in names]}


def load_key_image_cine_model(name=None, device="cpu", classes=None):
    """The cine network a perfusion card segments key images with: ``name`` or the default cine
    model. Its classes must be ``classes`` (the perfusion card's) when given: the ensemble
    averages probabilities channel by channel."""
    if name is None:
        if not list_models("cine"):
            raise CardiacInputError("perfusion segmentation", "the perfusion model's card segments with a cine network "
                                    "(input.segmentation.mode cine-key-image or ensemble) and no cine model is installed: "
                                    "install one (cardiacaiseg import-model) or choose a perfusion model whose card declares "
                                    "mode frames (--model)")
        name = default_model("cine")
    elif name not in {c["name"] for c in list_models()}:
        raise CardiacInputError("perfusion segmentation", f"the perfusion model's card segments with the cine network "
                                f"{name!r} (input.segmentation.cine_model), which is not installed: install it "
                                "(cardiacaiseg import-model) or choose a perfusion model whose card declares mode frames "
                                "(--model)")
    cine_card = get_card(name)
    if cine_card["task"] != "cine":
        raise CardiacInputError(name, f"the key-image path needs a cine model; {name!r} is a {cine_card['task']} model")
    if classes is not None and list(cine_card["classes"]) != list(classes):
        raise CardiacInputError(name, f"the cine model's classes {cine_card['classes']} differ from the perfusion model's "
                                f"{list(classes)}; the key-image path needs the same classes in the same order")
    return for_device(load_model(name, device=device), device)


def for_device(loaded, device):
    """``loaded`` if its runtime suits ``device``, else the same model in the runtime that does
    (torch for an explicit GPU device when ONNX Runtime had been chosen for the CPU)."""
    if loaded.runtime == "onnxruntime" and str(device) != "cpu" and loaded.card["weights"]["format"] != "onnx":
        return load_model(loaded.name, runtime="torch", device=device)
    return loaded


def _one_line(error, limit=300):
    """An error as one line for a message box or a log (torch's unpickling errors carry terminal
    colour codes): its first and last lines. Cut at 200 characters, TorchScript's errors lost
    the failed operation itself, which it writes last (probe 65)."""
    from .inference import last_lines

    return last_lines(error, limit)


FORMAT_NAMES = {"state_dict": "a PyTorch state_dict", "torchscript": "TorchScript", "onnx": "ONNX"}


def dry_run_shape(card, context=None, size=(64, 80), batch=2):
    """A small input like the ones the analysis feeds the network: cine (``batch`` slices, 1 + 2
    x ``context`` neighbouring slices, rows, cols), perfusion (1, frames, rows, cols); rows !=
    cols and a batch of 2 catch fixed-shape exports. ``context`` defaults to the card's
    input.context_slices; ``size`` is rounded up to the card's size_multiple."""
    multiple = card["input"].get("size_multiple", 16 if card["task"] == "cine" else 8)
    rows, cols = (-(-n // multiple) * multiple for n in size)
    if card["task"] == "perfusion":
        return (1, card["input"].get("frames", 48), rows, cols)
    # a 2.5D network reads each slice with its neighbours as channels (input.context_slices), as
    # the analysis feeds it: tested with one channel, every 2.5D model was refused at import, and
    # a 1-channel model declared 2.5D was imported, to fail at its first run
    if context is None:
        context = int(card["input"].get("context_slices", 0) or 0)
    return (batch, 1 + 2 * int(context), rows, cols)


# The dry run's second input: another batch and size, since a network exported at one fixed
# shape passed the first and failed at the analysis's first slice (probe 65)
SECOND_DRY_RUN = {"size": (112, 96), "batch": 1}


def weights_format_of(path):
    """"torchscript", "state_dict" or "onnx" as the file at ``path`` is written, or None when it is
    none of them. torch.save and torch.jit.save both write a zip archive; only TorchScript's holds
    a ``code/`` folder. ONNX is a protobuf, told by ONNX Runtime reading it."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any("/code/" in n or n.startswith("code/") for n in names):
                return "torchscript"
            return "state_dict" if any(n.endswith("data.pkl") for n in names) else None
        if not _onnxruntime_available():
            return None
        import onnxruntime

        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return "onnx"
    except Exception:  # noqa: BLE001 - a file none of the runtimes reads is "none of them"
        return None


def dry_run(card, path):
    """Load the weights at ``path`` and run them on a small input; refuse, naming ``path``, a file
    that does not load, a network that raises, or an output that is not (batch, 4, rows, cols)
    finite class scores. Returns (input shape, output shape)."""
    import torch

    fmt = card["weights"]["format"]
    try:
        module = _build_module(card, path)
    except CardiacInputError:
        raise
    except Exception as e:  # torch/onnxruntime raise many kinds for a damaged or foreign file
        found = weights_format_of(path)
        if found is not None and found != fmt:
            # a sound file under the wrong format: torch's reason ("your checkpoint file is
            # corrupted") sent the user after a good file (probe 80)
            raise CardiacInputError(path, f"the file is written as {FORMAT_NAMES[found]}, but the card's weights.format says "
                                    f"\"{fmt}\": set it to \"{found}\""
                                    + (" and name the network in the card's architecture" if found == "state_dict" else "")) from None
        raise CardiacInputError(path, f"cannot load as {FORMAT_NAMES[fmt]} weights: {_one_line(e)}")
    from .inference import context_slices

    # the neighbours the module reads (a state_dict's from its in_channels, an ONNX file's from the card)
    context = context_slices(module) if card["task"] == "cine" else None
    for sizes in ({}, SECOND_DRY_RUN):
        shape = dry_run_shape(card, context, **sizes)
        out_shape = _check_dry_run_output(_dry_run_once(module, card, path, shape), shape, path)
    return shape, out_shape


def _dry_run_once(module, card, path, shape):
    """The module's output for a test input of ``shape``: uniform noise, with the 0 and 1 a
    normalised image is clipped to in some rows (a network that gave NaN on saturated pixels
    passed a test of noise alone, probe 65)."""
    import torch

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    x[..., : shape[2] // 8, :] = 0.0
    x[..., -(shape[2] // 8):, :] = 1.0
    try:
        with torch.inference_mode():
            return module(x)
    except Exception as e:
        channels = ("the card's input.context_slices" if card["task"] == "cine" else "the card's input.frames")
        raise CardiacInputError(path, f"the network fails on a {shape} test input (batch, channels, rows, cols; float32, "
                                f"{shape[1]} channel(s) from {channels}, any size a multiple of the card's "
                                f"size_multiple; the analysis feeds it other sizes and batches): {_one_line(e)}")


def _check_dry_run_output(y, shape, path):
    import torch

    if not torch.is_tensor(y):
        raise CardiacInputError(path, f"the network returns {type(y).__name__}, not one tensor of class scores")
    expected = (shape[0], len(INTERNAL_CLASSES), shape[2], shape[3])
    if tuple(y.shape) != expected:
        hint = ("; it lacks the class axis" if y.dim() == 3 else
                f"; it gives {y.shape[1]} classes, the card names {len(INTERNAL_CLASSES)}" if y.dim() == 4 and tuple(y.shape[2:]) == shape[2:] else "")
        raise CardiacInputError(path, f"output shape {tuple(y.shape)} for a {shape} input; expected {expected} "
                                f"(batch, class, rows, cols){hint}")
    if not y.is_floating_point() or not bool(torch.isfinite(y).all()):
        raise CardiacInputError(path, f"output must be finite floating-point class scores; got {y.dtype} with NaN/inf or integers "
                                f"for a {shape} test input (noise, with rows of 0 and of 1 as a normalised image has)")
    return tuple(y.shape)


# The shipped CC0 sample (a GE heart-failure cine, ED and ES): an imported cine network segments
# it at import and is compared with the shipped default. A card whose pixel_mm was wrong (2.5 mm
# for a 1.25 mm network) or that left out a z-score normalisation imported with "test run passed"
# and measured EF 10 points and mass 15-35 g off with QC pass (probe 65).
IMPORT_SAMPLE = SHIPPED_DIR.parent / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
# Agreement a cine network must reach with the shipped default (unet-light v4) on the sample.
# The other shipped cine networks there: gammanet v9 Dice LV 0.958, MYO 0.896, EDV +6 %, mass
# +10 % (v10: 0.960, 0.895, +6 %, +11 %); unet-light-keyimage 0.977, 0.925, +1 %, -1 %. unet-light's own weights under a card
# saying 2.5 mm: 0.912, 0.755, -14 %, -20 % (session 34). The RV is not judged: the two shipped
# networks agree there at 0.60, and a network may leave the RV out.
SAMPLE_AGREEMENT = {"dice_lv": 0.90, "dice_myo": 0.80, "lv_edv": 0.15, "lv_mass": 0.20}


# mean Dice (LV, MYO) with the shipped default by which another pixel size must beat the card's
# to be said: unet-light under a 1.6 mm card reads 0.948 there and about 1.0 at 1.28 mm; its own
# 1.25 mm card reads lower at 1.0 and 1.56 mm
PIXEL_MM_BETTER_BY = 0.02


def sample_agreement(card, path):
    """The network at ``path`` (``card``'s) and the shipped default cine network on the shipped
    sample: Dice of LV, MYO and RV over ED and ES, LV EDV and mass, and whether they agree
    within ``SAMPLE_AGREEMENT``. None for a perfusion card or without the sample. A network that
    fails on the sample's real-sized slices is refused, naming ``path``."""
    if card["task"] != "cine" or not IMPORT_SAMPLE.is_dir():
        return None
    import numpy as np

    from ..cine import MYOCARDIAL_DENSITY_G_ML
    from ..labels import LV, MYO, RV
    from ..readers import load_study
    from .inference import NetworkFailed, segment_cine_study

    study = load_study(IMPORT_SAMPLE)
    default = load_model(default_model("cine"))   # as pipeline.segment runs it (not imported here: a cycle)
    reference = segment_cine_study(study, default, frames="ed_es")
    info = {"name": default.card["name"], "version": default.card.get("version", "1")}
    module = _build_module(card, path)
    runtime = "torch" if card["weights"]["format"] != "onnx" else "onnxruntime"

    def segmented(with_card):
        return segment_cine_study(study, LoadedModel(with_card, module, runtime), frames="ed_es")

    try:
        mine = segmented(card)
    except NetworkFailed as e:
        raise CardiacInputError(path, f"the network {e} (the shipped sample's slices)") from None
    frames = sorted(reference)
    voxel_ml = float(np.prod(study.spacing)) / 1000.0

    def dice(v, labels=None):
        a = np.stack([(labels if labels is not None else mine)[t] == v for t in frames])
        b = np.stack([reference[t] == v for t in frames])
        total = a.sum() + b.sum()
        return round(float(2 * (a & b).sum() / total), 3) if total else 1.0

    if not any((mine[t] == LV).any() for t in frames):
        # it labels nothing there: every analysis with it would end in "no LV" (probe 80)
        raise CardiacInputError(path, f"the network labels no LV blood pool on the shipped sample ({IMPORT_SAMPLE.parent.name}, "
                                "ED and ES), where the shipped networks find it: check the card's class order, "
                                "input.pixel_mm and the intensity normalisation the network was trained with")

    ed = max(frames, key=lambda t: int((reference[t] == LV).sum()))   # the default's larger LV: ED (analysis decides later)
    edv = [round(float((m[ed] == LV).sum()) * voxel_ml, 1) for m in (mine, reference)]
    mass = [round(float((m[ed] == MYO).sum()) * voxel_ml * MYOCARDIAL_DENSITY_G_ML, 1) for m in (mine, reference)]
    check = {"sample": IMPORT_SAMPLE.parent.name + " (ED and ES)", "compared_with": f"{info['name']} v{info['version']}",
             "dice_lv": dice(LV), "dice_myo": dice(MYO), "dice_rv": dice(RV), "lv_edv_ml": edv, "lv_mass_g": mass}
    limits = SAMPLE_AGREEMENT

    def off(pair):
        return abs(pair[0] - pair[1]) / pair[1] if pair[1] else float("inf")

    check["agrees"] = bool(check["dice_lv"] >= limits["dice_lv"] and check["dice_myo"] >= limits["dice_myo"]
                           and off(edv) <= limits["lv_edv"] and off(mass) <= limits["lv_mass"])
    # the card's pixel size against a quarter smaller and larger: read at the wrong one, a network
    # still agrees well enough on the sample (unet-light under cards of 1.6-2.0 mm: Dice MYO
    # 0.87-0.92) while a failing heart's EF reads 15-20 % for 10.5 (probe 80); a size at which it
    # agrees clearly better is the one it was trained at
    import copy

    px = float(card["input"]["pixel_mm"])
    own = (check["dice_lv"] + check["dice_myo"]) / 2
    for factor in (0.8, 1.25):
        other = copy.deepcopy(card)
        other["input"]["pixel_mm"] = round(px * factor, 3)
        try:
            labels = segmented(other)
        except NetworkFailed:
            continue
        there = (dice(LV, labels) + dice(MYO, labels)) / 2
        if there >= own + PIXEL_MM_BETTER_BY and there > check.get("better_at_dice", 0):
            check.update(better_at_pixel_mm=other["input"]["pixel_mm"], better_at_dice=round(there, 3), agrees=False)
    check["summary"] = sample_agreement_text(check)   # QC says it without importing the registry
    return check


def sample_agreement_text(check):
    """One sentence on ``sample_agreement``'s result, for the import and for QC."""
    edv, mass = check["lv_edv_ml"], check["lv_mass_g"]
    text = (f"on the shipped sample ({check['sample']}), against {check['compared_with']}: Dice LV "
            f"{check['dice_lv']:.2f} / MYO {check['dice_myo']:.2f} / RV {check['dice_rv']:.2f}, LV EDV "
            f"{edv[0]:.0f} mL against {edv[1]:.0f}, mass {mass[0]:.0f} g against {mass[1]:.0f}")
    if check.get("better_at_pixel_mm"):
        text += (f"; read as if its pixels were {check['better_at_pixel_mm']:g} mm it agrees clearly better (mean Dice "
                 f"LV/MYO {check['better_at_dice']:.2f}): is the card's input.pixel_mm the size it was trained at?")
    return text


def disagreement_at_import(card):
    """One line on an imported model that disagreed with the shipped default on the shipped
    sample when it was imported (every analysis with it is flagged), or None."""
    check = card.get("import_check")
    if not check or check.get("agrees", True):
        return None
    better = (f", agrees clearly better read at {check['better_at_pixel_mm']:g} mm pixels"
              if check.get("better_at_pixel_mm") else "")
    return (f"Dice LV {check['dice_lv']:.2f} / MYO {check['dice_myo']:.2f} / RV {check['dice_rv']:.2f}, LV EDV "
            f"{check['lv_edv_ml'][0]:.0f} mL for {check['lv_edv_ml'][1]:.0f} against {check['compared_with']} on the shipped "
            f"sample{better}; its analyses are flagged for review")


def _is_model_folder(folder):
    """True for a plain folder that holds only what an import writes (card + its weights), so
    replacing it deletes nothing else."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        card = json.loads((folder / CARD_NAME).read_text())
        allowed = {CARD_NAME, card["weights"]["file"]}
        entries = list(folder.iterdir())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(p.name in allowed and p.is_file() and not p.is_symlink() for p in entries)


def _weights_file_name(weights, fmt):
    name = weights.name
    return name if SAFE_FILE_NAME.match(name) and name != CARD_NAME else DEFAULT_WEIGHT_FILES[fmt]


_REPLACED_FOLDER = re.compile(r"^\.replaced-(.+)-[0-9a-f]{8}$")
STALE_STAGING_S = 3600.0   # an import's staging folder this old is a killed import's, not one in progress


def _recover_interrupted_imports(root):
    """What an import killed outright (SIGKILL, power) left in the user folder: an installed model
    moved aside with no new one in its place goes back under its name (it had vanished from
    `models`); aside beside a model that was installed, or an old staging folder, is removed."""
    import time

    for folder in root.iterdir():
        match = _REPLACED_FOLDER.match(folder.name)
        try:
            if match and folder.is_dir() and not folder.is_symlink():
                name = root / match.group(1)
                if not name.exists() and _is_model_folder(folder):
                    os.rename(folder, name)
                else:
                    shutil.rmtree(folder, ignore_errors=True)
            elif folder.name.startswith(".import-") and folder.is_dir() and \
                    time.time() - folder.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue   # another process may be importing: its folders are not ours to settle


def import_model(weights, card_path, dest=None, overwrite=False):
    """Install a user's TorchScript/ONNX (or state_dict) model with its card into the user folder.

    Checked before anything is written: the card (:func:`validate_card_for_import`), the name
    (a slug, not a shipped model's), the sha256 of the weights, and a dry run of the network.
    The copy is assembled in a staging folder inside the user folder and renamed into place, so
    a failed import leaves nothing behind. ``overwrite`` replaces a model imported before under
    the same name, never a folder holding anything else.
    """
    weights, card_path = Path(weights), Path(card_path)
    if not weights.is_file():   # first: a card's faults are beside the point while its weights are missing
        raise CardiacInputError(weights, "weights file not found" if not weights.is_dir() else
                                "a folder, not a weights file (give the TorchScript/ONNX/state_dict file)")
    try:
        # utf-8-sig: Notepad and PowerShell 5 save UTF-8 with a byte-order mark (probe 95)
        card = json.loads(card_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardiacInputError(card_path, f"cannot read model card ({_one_line(e)})")
    validate_card_for_import(card, card_path)
    # only the weights file is copied in: an ONNX export the card may list would be missing
    card.pop("onnx", None)
    # the sample check is the import's own, made below: one copied from another card would keep
    # or hide the QC flag of a network it never measured
    card.pop("import_check", None)
    name = card["name"]
    if name in shipped_names():
        raise CardiacInputError(card_path, f"name {name!r} is a shipped model; choose another name in the card "
                                f"({NAME_CLASH_RULE})")
    if sha256_of(weights) != card["weights"]["sha256"]:
        raise CardiacInputError(weights, "sha256 of the weights does not match the model card")
    root = Path(dest) if dest else user_models_dir()
    if root.exists() and not root.is_dir():
        raise CardiacInputError(root, "the user models folder is a file, not a folder")
    if _same_folder(root, SHIPPED_DIR) or SHIPPED_DIR.resolve() in root.resolve().parents:
        raise CardiacInputError(root, "the user models folder must not be the shipped models folder")
    target = root / name
    if root.is_dir():
        # before the checks: a model an import killed outright left aside is back under its name,
        # so it is replaced only with --force (review of session 44)
        _recover_interrupted_imports(root)
    if target.is_symlink():
        raise CardiacInputError(target, "is a symbolic link; it is not replaced (remove it first)")
    if target.exists():
        unused = next((why for folder, why in scan_models()[1] if _same_folder(folder, target)), None)
        if not overwrite:
            if unused:
                # "already installed" of a folder `models` calls not used (probe 95)
                raise CardiacInputError(target, f"a folder of this name holds a model that is not used ({unused}); import "
                                                 "with --force to replace it")
            raise CardiacInputError(target, "a model with this name is already installed; import it with --force to replace it")
        if not _is_model_folder(target):
            entries = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
            if entries == [CARD_NAME] and (target / CARD_NAME).is_file() and not (target / CARD_NAME).is_symlink():
                pass   # a broken card alone (its weights gone): nothing else to lose
            else:
                raise CardiacInputError(target, "exists and holds more than a model card and its weights "
                                        f"({', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''}); it is not "
                                        "replaced, even with --force (move it away first)")
    dry_run(card, weights)
    check = sample_agreement(card, weights)
    if check is not None:
        card["import_check"] = check

    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    old = None
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; an installed model is an ordinary folder
        card["weights"]["file"] = _weights_file_name(weights, card["weights"]["format"])
        copied = staging / card["weights"]["file"]
        shutil.copyfile(weights, copied)
        if sha256_of(copied) != card["weights"]["sha256"]:
            raise CardiacInputError(weights, "the copy differs from the file (changed while importing?); nothing installed")
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        if target.exists():
            old = root / f".replaced-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
                old = None
            raise
    except OSError as e:
        raise CardiacInputError(target, f"cannot install the model ({_one_line(e)}); nothing installed")
    finally:
        if old is not None and not target.exists():
            # interrupted (Ctrl-C, SIGTERM) between moving the installed model aside and moving the
            # new one in: both were removed (probe 95); the installed one goes back
            os.rename(old, target)
            old = None
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if created_root and not any(root.iterdir()):
            root.rmdir()
    installed = read_card(target)
    installed["_source"] = "user"
    return installed
