"""Model resolution and loading: local files only, never a download, never a hang.

`resolve` is cheap (config only) so bad input fails at session start; `load` builds the weights.
"""
import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import REPO_ROOT, UsageError, cache
from .roofline import weight_bytes

CACHE_ROOT = Path(os.environ.get("GCOMPRESS_CACHE", Path.home() / ".cache" / "gcompress_bench"))
SYNTHETIC_STAMP = "synthetic weights"


class ModelUnavailable(UsageError):
    """A model that is not on this machine: names it, where we looked, and what to do."""


@dataclass
class ModelSpec:
    name: str
    kind: str            # gguf_package | synthetic | hf
    path: str            # folder from_pretrained reads, or the config file of a synthetic model
    config: object = field(repr=False)
    revision: str = None  # the HF snapshot (commit) an HF id resolved to

    @property
    def synthetic(self):
        return self.kind == "synthetic"


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module = field(repr=False)
    tokenizer: object = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    load_s: float

    def describe(self):
        cfg = self.spec.config
        return {
            "name": self.spec.name, "kind": self.spec.kind, "path": self.spec.path, "revision": self.spec.revision,
            "weights": SYNTHETIC_STAMP if self.spec.synthetic else "pretrained",
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "attn_implementation": self.model.config._attn_implementation,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "weight_bytes": weight_bytes(self.model), "load_s": round(self.load_s, 3),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "max_positions": cfg.max_position_embeddings,
        }


def resolve(name, registry):
    """Find a model's files and read its config, without loading weights."""
    from transformers import AutoConfig

    entry = registry.get(name)
    if entry and entry["kind"] == "gguf_package":
        folder = _dequantized_copy(name, entry)
        return ModelSpec(name, "gguf_package", str(folder), AutoConfig.from_pretrained(folder))
    if entry and entry["kind"] == "synthetic":
        path = REPO_ROOT / entry["config"]
        return ModelSpec(name, "synthetic", str(path), _config_from_file(path))
    if os.path.isdir(name):
        return ModelSpec(name, "hf", os.path.abspath(name), AutoConfig.from_pretrained(name))
    folder = _cached_hf_snapshot(name)
    return ModelSpec(name, "hf", folder, AutoConfig.from_pretrained(folder), revision=os.path.basename(folder))


def _config_from_file(path):
    from transformers import AutoConfig

    data = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(**data)


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _cached_hf_snapshot(repo_id):
    """The snapshot folder of an HF id in the local HF cache, with its config and weights."""
    from huggingface_hub import constants, try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json")
    fix = (f"nothing is downloaded at run time: on a machine with network run `hf download {repo_id}` (or "
           "tools/fill_hf_cache.py) into that cache, or set HF_HOME / HF_HUB_CACHE to the cache that holds it")
    if not isinstance(hit, str):
        raise ModelUnavailable(f"model {repo_id!r} is not in the local HF cache (searched {constants.HF_HUB_CACHE}); "
                               + fix)
    folder = os.path.dirname(hit)
    if not any(any(Path(folder).glob(pattern)) for pattern in WEIGHT_FILES):
        raise ModelUnavailable(f"model {repo_id!r}: the HF cache holds its config but no weights "
                               f"({' or '.join(WEIGHT_FILES)}) in {folder}; " + fix)
    return folder


def _dequantized_copy(name, entry):
    """The packaged GGUF, dequantized once into a safetensors folder that reloads in well under a second."""
    folder = CACHE_ROOT / "models" / name
    cache.build_once(folder, lambda tmp: _export_gguf(name, entry, tmp))
    return folder


def _export_gguf(name, entry, out):
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"model {name!r} needs the Python package {entry['package']!r}, which is not installed "
            f"(searched this interpreter's sys.path); install it with: {entry['install']}")
    src = Path(spec.submodule_search_locations[0])
    if not (src / entry["file"]).exists():
        raise ModelUnavailable(f"model {name!r}: {src / entry['file']} is missing; reinstall with: {entry['install']}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=entry["file"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=entry["file"])
    model.hf_quantizer = None  # the weights are dequantized; without this save_pretrained refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: 'cuda' was asked for but torch sees no CUDA GPU; allowed here: auto, cpu")
    return torch.device(name)


def load(spec, dtype, device):
    """Weights on `device` in `dtype`, SDPA attention, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype)
    start = time.perf_counter()
    if spec.synthetic:
        spec.config._attn_implementation = "sdpa"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(spec.config, dtype=dtype, attn_implementation="sdpa")
        tokenizer = None
    else:
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, dtype=dtype, attn_implementation="sdpa", local_files_only=True, device_map=None).to(device)
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LoadedModel(spec, model, tokenizer, device, dtype, time.perf_counter() - start)
