"""Erasure LoRA files: diffusers/PEFT keys in safetensors, written atomically, with provenance.

Key format (the layout of the released EraseAnything LoRA, tests/unit/test_lora_file.py). Each target is stored under its diffusers name, e.g.
`transformer.transformer_blocks.3.attn.add_q_proj.lora_A.weight` (r, in) and `...lora_B.weight`
(row_len, r). There are no `alpha` keys: the scale alpha/r is folded into B, so both ComfyUI's stock
LoRA loader and diffusers' `FluxPipeline.lora_state_dict` apply exactly delta W = B @ A. ComfyUI maps
the diffusers names onto row slices of the fused `qkv` / `linear1` weights; diffusers loads them 1:1.

Metadata (safetensors allows str -> str only): `"format": "pt"` as every loader expects, and our
provenance under keys prefixed `eraseanything.`, each value a JSON document. Keys the pack writes:
`eraseanything.version` (added here), `eraseanything.config` (the EraseConfig as a dict) and
`eraseanything.base_model` (a `model_fingerprint`). `describe_metadata` reads them, and tolerates
files that have none (the released EraseAnything LoRA carries only `{"format": "pt"}`).
"""

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__
from .lora import ErasureLoRA

logger = logging.getLogger(__name__)

EXTENSION = ".safetensors"
METADATA_PREFIX = "eraseanything."
# Windows device names: "nul.safetensors" opens the device, not a file, on older Windows.
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def peft_state_dict(lora: ErasureLoRA, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The LoRA as PEFT tensors: `{peft_name}.lora_A.weight` (r, in), `.lora_B.weight` (row_len, r).

    The scale alpha/r is multiplied into B in float32 before the cast, so B @ A == `lora.delta(i)` up
    to `dtype` rounding. Tensors are fresh contiguous CPU copies, safe to keep while training goes on.
    """
    state_dict = {}
    with torch.no_grad():
        for i, target in enumerate(lora.targets):
            a = lora.lora_A[i].detach().float()                   # (r, in)
            b = lora.lora_B[i].detach().float() * lora.scale      # (row_len, r)
            state_dict[f"{target.peft_name}.lora_A.weight"] = a.to("cpu", dtype, copy=True).contiguous()
            state_dict[f"{target.peft_name}.lora_B.weight"] = b.to("cpu", dtype, copy=True).contiguous()
    return state_dict


def safe_lora_path(folder, name: str) -> Path:
    """`folder / name[.safetensors]`, refusing any name that could point outside `folder`.

    Rejected with a ValueError that says what to type instead: empty names, path separators, drive
    letters, names starting with '.' (this also covers '..'), control characters, Windows device
    names, over-long names, and names that resolve outside `folder` (e.g. through a symlink).
    """
    if not isinstance(name, str):
        raise ValueError(f"file name must be text, got {type(name).__name__}.")
    name = name.strip()
    hint = "Type a plain file name such as 'erase_van_gogh'"
    if not name:
        raise ValueError(f"file name is empty. {hint}.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"file name {name!r} contains control characters. {hint}.")
    if any(sep in name for sep in ("/", "\\", ":")):
        raise ValueError(f"file name {name!r} contains '/', '\\' or ':', but LoRAs are saved directly "
                         f"into {folder}. {hint}, without folders.")
    if name.startswith("."):
        raise ValueError(f"file name {name!r} starts with '.'. {hint}.")
    if not name.lower().endswith(EXTENSION):
        name += EXTENSION
    if name[: -len(EXTENSION)].split(".")[0].lower() in _RESERVED_NAMES:
        raise ValueError(f"file name {name!r} is a reserved device name on Windows. {hint}.")
    if len(name.encode("utf-8")) > 200:
        raise ValueError(f"file name is {len(name.encode('utf-8'))} bytes long; keep it under 200.")
    root = Path(folder).resolve()
    path = root / name
    if path.resolve().parent != root:
        raise ValueError(f"file name {name!r} resolves to {path.resolve()}, outside {root}. {hint}.")
    return path


def save_lora_file(state_dict: dict[str, torch.Tensor], folder, name: str, metadata: dict) -> Path:
    """Write `state_dict` to `folder/name.safetensors` atomically and return the path written.

    An existing file is never replaced: the name gets `_2`, `_3`, ... instead. The bytes go to a
    hidden temp file in the same folder (a '.' name not ending in .safetensors, so ComfyUI's LoRA
    list never shows it), are fsync'ed, then renamed with os.replace; on any error the temp file is
    removed. Two processes saving the same name at the same instant could still race between the
    free-name check and the rename; one ComfyUI runs its nodes one at a time.

    `metadata` values are JSON-encoded and stored under `eraseanything.<key>`, next to "format": "pt".
    """
    if not state_dict:
        raise ValueError("the LoRA has no tensors to save; check the target groups.")
    header = encode_metadata(metadata)
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in state_dict.items()}
    path = _free_path(safe_lora_path(folder, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkstemp: its 0600 mode would survive the rename; "xb" honours the umask
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(tmp, "xb") as f:
            f.write(safetensors_bytes(tensors, metadata=header))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("saved LoRA with %d tensors to %s", len(tensors), path)
    return path


def load_lora_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a .safetensors LoRA: (tensors on the CPU, the raw str -> str metadata).

    Never unpickles: other extensions (.pt, .ckpt, .bin, ...) are refused, and so is any file that
    is not well-formed safetensors (truncated, or a pickle renamed to .safetensors).
    """
    path = Path(path)
    if path.suffix.lower() != EXTENSION:
        raise ValueError(f"{path.name}: only {EXTENSION} LoRA files are read, because .pt/.ckpt/.bin files "
                         "can run code when loaded. Convert it to safetensors or pick another file.")
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path.name} is not a valid safetensors file ({e}). It may be truncated or "
                         "not a LoRA; save or download it again.") from e
    return state_dict, metadata


def provenance(metadata: dict[str, str]) -> dict:
    """Our `eraseanything.*` metadata with the prefix removed and values JSON-decoded (raw if not JSON)."""
    out = {}
    for key, raw in metadata.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX):]] = json.loads(raw)
            except (TypeError, ValueError):
                out[key[len(METADATA_PREFIX):]] = raw
    return out


def describe_metadata(metadata: dict[str, str]) -> str:
    """One line for the UI, e.g. "erases 'nudity' (anchor 'a person'), 200 steps, seed 0, rank 8"."""
    info = provenance(metadata or {})
    if not info:
        return f"no EraseAnything metadata (format: {(metadata or {}).get('format', 'unknown')})"
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    parts = []
    if config.get("concept"):
        anchor = (f" (anchor {config['anchor']!r})" if config.get("anchor") else
                  f" (anchor word {config['anchor_word']!r})" if config.get("anchor_word") else "")
        parts.append(f"erases {config['concept']!r}{anchor}")
    if config.get("preset"):
        parts.append(f"preset {config['preset']}")
    for key, label in (("steps", "steps"), ("seed", "seed"), ("rank", "rank")):
        if config.get(key) is not None:
            parts.append(f"{config[key]} {label}" if key == "steps" else f"{label} {config[key]}")
    if config.get("targets"):
        parts.append("targets " + "+".join(map(str, config["targets"])))
    if info.get("base_model"):
        parts.append(f"base model {info['base_model']}")
    if info.get("version"):
        parts.append(f"EraseAnything {info['version']}")
    return ", ".join(parts) or "EraseAnything metadata without a config"


def model_fingerprint(state_dict_items, samples_per_tensor: int = 1024) -> str:
    """A 16-hex-digit hash of a model's weights, for provenance ("trained on which base model?").

    Hashes every (name, dtype, shape) and up to `samples_per_tensor` values per tensor taken at an
    even stride over the flattened tensor, cast to float32. Cost is O(number of tensors), so a 12B
    Flux takes milliseconds, even on the GPU (only the samples are copied). Not a checksum: a change
    at positions between samples goes unnoticed. Pass the unpatched weights, e.g.
    `diffusion_model.state_dict().items()`; the hash depends on the key names, not their order.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict_items, key=lambda item: item[0]):
        if tensor.is_meta:
            raise ValueError(f"{name} is on the meta device and has no values to fingerprint.")
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::stride][:samples_per_tensor].to("cpu", torch.float32)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_metadata(metadata: dict) -> dict[str, str]:
    """The safetensors header form: {"format": "pt", "eraseanything.<key>": JSON string}."""
    header = {"format": "pt", f"{METADATA_PREFIX}version": json.dumps(__version__)}
    for key, value in (metadata or {}).items():
        full_key = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        try:
            header[full_key] = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata[{key!r}] cannot be stored as JSON ({e}); pass plain "
                             "str/int/float/bool/list/dict values, e.g. EraseConfig.to_metadata().") from e
    return header


def _free_path(path: Path) -> Path:
    """`path`, or `stem_2.safetensors`, `stem_3...`: the first that does not exist yet."""
    candidate, n = path, 2
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate
