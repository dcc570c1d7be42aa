"""Model resolution and loading: local files only, never a download, never a hang.

`resolve` is cheap (config only) so bad input fails at session start; `load` builds the weights. torch is
imported where weights are built, so resolving a model (and reading options) never imports it.
"""
import gc
import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from gcompress_bench import REPO_ROOT, UsageError, cache

# an empty GCOMPRESS_CACHE is unset, not the current folder
CACHE_ROOT = Path(os.environ.get("GCOMPRESS_CACHE") or Path.home() / ".cache" / "gcompress_bench")
SYNTHETIC_STAMP = "synthetic weights"


def weight_bytes(model, decode_step=False):
    """Parameter bytes, a tied weight once (state_dict lists it under both names). decode_step:
    only what a decode step reads, i.e. without an input embedding that is not also the output
    projection (a step gathers B rows of it)."""
    params = {id(p): p for p in model.parameters()}
    emb = model.get_input_embeddings().weight
    if decode_step and emb is not model.get_output_embeddings().weight:
        del params[id(emb)]
    return sum(p.numel() * p.element_size() for p in params.values())


def head_dim(config):
    """The attention head width: the config's own, else hidden / heads (configs that predate the field)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class ModelUnavailable(UsageError):
    """A model that is not on this machine: names it, where we looked, and what to do."""


@dataclass
class ModelSpec:
    name: str
    kind: str            # gguf_package | synthetic | hf
    path: str            # folder from_pretrained reads, or the config file of a synthetic model
    config: object = field(repr=False)
    revision: str = None  # the HF snapshot (commit) an HF id resolved to
    cache: str = None     # the suite's own model cache: hit, built, or rebuilt (and why)
    canonical: str = None  # the model's own name (the HF repo's), as method output dirs carry it

    def __post_init__(self):
        self.canonical = self.canonical or self.name.rstrip("/").split("/")[-1]

    @property
    def synthetic(self):
        return self.kind == "synthetic"


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: object = field(repr=False)   # a torch.nn.Module (HF causal LM)
    tokenizer: object = field(repr=False)
    device: object                      # torch.device
    dtype: object                       # torch.dtype
    load_s: float

    def describe(self):
        cfg = self.spec.config
        return {
            "name": self.spec.name, "kind": self.spec.kind, "path": self.spec.path, "revision": self.spec.revision,
            "model_cache": self.spec.cache,
            "weights": SYNTHETIC_STAMP if self.spec.synthetic else "pretrained",
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "attn_implementation": self.model.config._attn_implementation,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "weight_bytes": weight_bytes(self.model), "load_s": round(self.load_s, 3),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim(cfg),
            "max_positions": cfg.max_position_embeddings,
        }


def check_cache_root():
    if CACHE_ROOT.exists() and not CACHE_ROOT.is_dir():
        raise UsageError(f"GCOMPRESS_CACHE: {str(CACHE_ROOT)!r} is not a folder; allowed: a folder (made if missing), "
                         "or unset for ~/.cache/gcompress_bench")


def resolve(name, registry, store=True):
    """Find a model's files and read its config, without loading weights. store=False (--check-only) writes
    nothing: a packaged model not yet in the cache is exported to a temporary folder, removed at exit."""
    entry = registry.get(name)
    if entry and entry["kind"] == "gguf_package":
        check_cache_root()
        folder = CACHE_ROOT / "models" / name
        if not store and (not folder.exists() or cache.problem(folder)):
            import atexit
            import shutil
            import tempfile
            folder = Path(tempfile.mkdtemp(prefix="gcompress-check-"))
            atexit.register(shutil.rmtree, folder, True)
            _export_gguf(name, entry, folder)
            return ModelSpec(name, "gguf_package", str(folder), _config(name, folder), canonical=_canonical(entry),
                             cache="not in the cache: exported to a temporary folder for this check, not stored")
        how = cache.entry(folder, lambda tmp: _export_gguf(name, entry, tmp))
        return ModelSpec(name, "gguf_package", str(folder), _config(name, folder), cache=how,
                         canonical=_canonical(entry))
    if entry and entry["kind"] == "synthetic":
        path = REPO_ROOT / entry["config"]
        return ModelSpec(name, "synthetic", str(path), _config_from_file(path), canonical=_canonical(entry))
    if os.path.isdir(name):
        folder = _checked_folder(name, os.path.abspath(name), f"--model: the folder {os.path.abspath(name)}")
        return ModelSpec(name, "hf", folder, _config(name, folder))
    folder = _cached_hf_snapshot(name)
    return ModelSpec(name, "hf", folder, _config(name, folder), revision=os.path.basename(folder))


def _canonical(entry):
    return entry["hf_name"].split("/")[-1] if entry.get("hf_name") else None


def _config(name, folder):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelUnavailable(f"model {name!r}: {folder}/config.json can't be read as a transformers config "
                               f"({first})") from None


def weights_id(spec):
    """What the weights are, to key the caches derived from them (whitening factors): the HF snapshot
    revision, or the content digest of the weight files (cache.digest); None for random weights."""
    if spec.synthetic:
        return None
    if spec.revision:
        return f"revision {spec.revision}"
    files = [p for pattern in WEIGHT_FILES for p in sorted(Path(spec.path).glob(pattern))]
    return "blocks-sha256 " + "+".join(cache.digest(f) for f in files)


def _config_from_file(path):
    from transformers import AutoConfig

    data = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(**data)


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _cached_hf_snapshot(repo_id):
    """The snapshot folder of an HF id in the local HF cache, with its config and sound weights."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:
        raise ModelUnavailable(f"--model: {repo_id!r} is neither a model folder on this machine nor an HF id; "
                               "allowed: smollm2-135m, llama3-8b-shape, an HF id (org/name) in the local HF cache, "
                               "or a model folder") from None
    fix = (f"nothing is downloaded at run time: on a machine with network run `hf download {repo_id}` (or "
           "tools/fill_hf_cache.py) into that cache, or set HF_HOME / HF_HUB_CACHE to the cache that holds it")
    if not isinstance(hit, str):
        raise ModelUnavailable(f"model {repo_id!r} is not in the local HF cache (searched {constants.HF_HUB_CACHE}); "
                               + fix)
    return _checked_folder(repo_id, os.path.dirname(hit), f"model {repo_id!r}: the HF cache", fix)


def _checked_folder(name, folder, where, fix="allowed: a folder written by save_pretrained (config.json and weights)"):
    """A model folder with a config and weights whose safetensors headers match their sizes, so a missing
    or truncated file stops the run at session start, named, instead of failing every cell."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelUnavailable(f"{where} holds no config.json ({folder}); {fix}")
    weights = [p for pattern in WEIGHT_FILES for p in sorted(Path(folder).glob(pattern))]
    if not weights:
        raise ModelUnavailable(f"{where} holds a config but no weights ({' or '.join(WEIGHT_FILES)}) in {folder}; {fix}")
    for f in weights:
        why = safetensors_problem(f) if f.suffix == ".safetensors" else None
        if why:
            raise ModelUnavailable(f"model {name!r}: {f} {why}; replace the file (e.g. `hf download "
                                   f"{name} --force-download`)")
    return folder


def safetensors_problem(path):
    """None if the file is as long as its header says, else what is wrong (a truncated download, a bad copy)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        return f"is not a safetensors file ({size} bytes, unreadable header)"
    tensors = [v for k, v in header.items() if k != "__metadata__"]
    if not all(isinstance(v, dict) and isinstance(v.get("dtype"), str) and isinstance(v.get("shape"), list)
               and _offsets(v.get("data_offsets")) for v in tensors):
        return f"is not a safetensors file ({size} bytes; its header is not a table of tensors)"
    end = 8 + n + max((v["data_offsets"][1] for v in tensors), default=0)
    return None if end == size else f"is {size} bytes but its header describes {end}: truncated or corrupt"


def _offsets(o):
    return (isinstance(o, list) and len(o) == 2 and all(type(x) is int for x in o) and 0 <= o[0] <= o[1])


def _export_gguf(name, entry, out):
    import torch
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


def release_memory(device):
    """Return freed blocks to the device; the bytes still reserved afterwards (None off CUDA)."""
    import torch
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device)


def pick_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: 'cuda' was asked for but torch sees no CUDA GPU; allowed here: auto, cpu")
    return torch.device(name)


def load_tokenizer(spec):
    """The tokenizer alone (cheap): session-start checks count tokens with it. None for random weights."""
    if spec.synthetic:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a missing or foreign tokenizer raises OSError, ValueError, TypeError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailable(f"model {spec.name!r}: no usable tokenizer in {spec.path} ({first}); allowed: a "
                               "folder with the tokenizer files save_pretrained writes (tokenizer.json, "
                               "tokenizer_config.json)") from None


def load(spec, dtype, device):
    """Weights on `device` in `dtype`, SDPA attention, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

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
        tokenizer = load_tokenizer(spec)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LoadedModel(spec, model, tokenizer, device, dtype, time.perf_counter() - start)
