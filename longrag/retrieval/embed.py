"""Text -> normalised float32 vectors, on top of a sentence-transformers model.

Two ways to run the same embedder:

- ``torch``: the ``SentenceTransformer`` itself (``model.encode``);
- ``onnx`` / ``onnx-int8``: the model's transformer exported once to ONNX (offline, from the
  local model folder), graph-optimised by onnxruntime's BERT fusions and, for ``onnx-int8``,
  with int8 dynamically quantised weights; run by onnxruntime with length-sorted batches and
  the model's own pooling. :class:`OnnxSentenceEncoder` has the ``encode`` signature of a
  ``SentenceTransformer`` and forwards every other attribute to the wrapped model, so code
  written against a ``SentenceTransformer`` keeps working.

The exports are cached by :func:`prepare_onnx` (the registry calls it with a folder under the
model cache). ``bench/embed_speed.py`` measures the backends side by side.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "model-opt.onnx", "onnx-int8": "model-opt-int8.onnx"}
_EXPORT_VERSION = 2  # bump when the export recipe changes (invalidates caches)


class Embedder:
    """Encodes texts with a loaded embedder; counts tokens with its tokenizer.

    Args:
        model: a ``SentenceTransformer`` or an :class:`OnnxSentenceEncoder` (from
            :func:`longrag.models.registry.load_embedder`).
        batch_size: texts per forward pass (``None``: the model's own default, which for the
            ONNX encoder is the measured best of ``bench/embed_speed.py``).
    """

    def __init__(self, model: Any, *, batch_size: int | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.dim = int(model.get_embedding_dimension())
        self.max_tokens = int(model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        kwargs = {} if self.batch_size is None else {"batch_size": self.batch_size}
        vecs = self.model.encode(
            list(texts),
            **kwargs,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word-piece counts without special tokens (no truncation)."""
        if not len(texts):
            return []
        enc = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]


# -- ONNX backend -----------------------------------------------------------------------------


def _pooling_mode(st_model: Any) -> str:
    """``mean`` or ``cls``: the pooling of the sentence-transformers model (others refused)."""
    for module in st_model:
        name = type(module).__name__
        if name == "Pooling":
            mode = getattr(module, "pooling_mode", None)
            if mode is None:  # older sentence-transformers
                cfg = module.get_config_dict()
                mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
            if mode not in ("mean", "cls"):
                raise ValueError(f"pooling {mode!r} is not supported by the ONNX backend")
            return str(mode)
    raise ValueError("the embedder has no Pooling module")


def _normalises(st_model: Any) -> bool:
    return any(type(m).__name__ == "Normalize" for m in st_model)


def _export_fp32(st_model: Any, path: Path) -> None:
    """Export the transformer (token ids -> last hidden state) with dynamic batch and length.

    The graph is traced with eager attention: its MatMul/Softmax pattern is what onnxruntime's
    optimiser fuses into one ``Attention`` op (the SDPA trace is left unfused, and then ONNX is
    no faster than torch: ``bench/embed_speed.py``).
    """
    transformer = st_model[0].auto_model.eval()
    previous = transformer.config._attn_implementation
    transformer.set_attn_implementation("eager")
    try:
        _trace(st_model, transformer, path)
    finally:
        transformer.set_attn_implementation(previous)


def _trace(st_model: Any, transformer: Any, path: Path) -> None:
    import torch

    tokenizer = st_model.tokenizer
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args))).last_hidden_state

    sample = tokenizer(["an example sentence", "another"], padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            _Wrapped(), args, str(path), input_names=names, output_names=["last_hidden_state"],
            dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False,
        )


def _optimise(src: Path, dst: Path, config: Any) -> None:
    """onnxruntime's offline BERT fusions (attention, layer norm, GELU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = int(getattr(config, "num_attention_heads", 0))
    hidden = int(getattr(config, "hidden_size", 0))
    model_type = "bert" if getattr(config, "model_type", "bert") in ("bert", "roberta", "xlm-roberta") else "bert"
    opt = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1,
                         use_gpu=False)
    opt.save_model_to_file(str(dst))


def _quantise(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights of MatMul / Gemm / fused attention nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused nodes (com.microsoft domain) defeat shape inference: tell the quantiser they are float.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _manifest(source_id: str) -> dict[str, Any]:
    return {"source": source_id, "version": _EXPORT_VERSION}


def onnx_cache_valid(cache_dir: Path, source_id: str) -> bool:
    """Whether ``cache_dir`` holds every export, made by this recipe from ``source_id``."""
    try:
        manifest = json.loads((cache_dir / "longrag-onnx.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest == _manifest(source_id) and all((cache_dir / f).exists() for f in ONNX_FILES.values())


def prepare_onnx(st_model: Any, cache_dir: Path, *, source_id: str) -> Path:
    """Export, optimise and quantise ``st_model`` once into ``cache_dir`` (offline).

    Args:
        st_model: the loaded ``SentenceTransformer`` (its local weights are exported).
        cache_dir: folder for this model's ONNX files (created; replaced when stale).
        source_id: identifies the source weights (e.g. their SHA-256); a different one
            re-exports.

    Returns:
        ``cache_dir`` holding ``model-opt.onnx`` and ``model-opt-int8.onnx``.
    """
    if onnx_cache_valid(cache_dir, source_id):
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(cache_dir.parent / f".{cache_dir.name}.lock", "w") as lf:  # one exporter across processes
        fcntl.flock(lf, fcntl.LOCK_EX)
        if onnx_cache_valid(cache_dir, source_id):
            return cache_dir
        with tempfile.TemporaryDirectory(dir=cache_dir.parent) as tmp:
            t = Path(tmp)
            _export_fp32(st_model, t / "model.onnx")
            _optimise(t / "model.onnx", t / ONNX_FILES["onnx"], st_model[0].auto_model.config)
            _quantise(t / ONNX_FILES["onnx"], t / ONNX_FILES["onnx-int8"])
            (t / "model.onnx").unlink()
            (t / "longrag-onnx.json").write_text(json.dumps(_manifest(source_id)))
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            os.replace(t, cache_dir)
            cache_dir.chmod(0o755)
            t.mkdir()  # TemporaryDirectory removes it on exit
    log.info("exported ONNX embedder to %s", cache_dir)
    return cache_dir


class OnnxSentenceEncoder:
    """A ``SentenceTransformer`` whose forward pass runs in onnxruntime.

    ``encode`` tokenizes all texts once, sorts them by token count and pads each batch only to
    its longest member (with the tokenizer's own ``pad``), pools like the wrapped model (mean or
    CLS) and normalises when the model does. Every other attribute (``tokenizer``,
    ``max_seq_length``, ``get_embedding_dimension``...) is the wrapped model's.

    Args:
        st_model: the ``SentenceTransformer`` (tokenizer, pooling, dimension come from it).
        onnx_path: an exported model from :func:`prepare_onnx`.
        threads: onnxruntime intra-op threads (0: one per core).
        batch_size: default texts per run. Texts are sorted by token count, so a batch holds
            almost no padding; on the reference 2-core CPU batches of 8 were fastest
            (``bench/embed_speed.py``).
    """

    def __init__(self, st_model: Any, onnx_path: Path, *, threads: int = 0, batch_size: int = 8) -> None:
        import onnxruntime as ort

        self._st = st_model
        self.onnx_path = Path(onnx_path)
        self.pooling = _pooling_mode(st_model)
        self.normalises = _normalises(st_model)
        self.default_batch_size = batch_size
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs: no busy-wait
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found here
        if name == "_st":
            raise AttributeError(name)
        return getattr(self._st, name)

    def _tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids of every text (with special tokens, truncated to the model's limit), unpadded."""
        return self._st.tokenizer(texts, truncation=True, max_length=int(self._st.max_seq_length))

    def _forward(self, enc: dict[str, list[list[int]]], idx: Sequence[int]) -> np.ndarray:
        """Pooled hidden states of the texts ``idx`` of ``enc``, padded to their longest member."""
        batch = self._st.tokenizer.pad({k: [v[i] for i in idx] for k, v in enc.items()}, return_tensors="np")
        feeds = {n: batch[n].astype(np.int64) for n in self.input_names}
        hidden = self.session.run(None, feeds)[0]
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].astype(np.float32)[..., None]
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        *,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        **_: Any,
    ) -> Any:
        """Embeddings of ``sentences`` (same contract as ``SentenceTransformer.encode``)."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        dim = int(self._st.get_embedding_dimension())
        out = np.zeros((len(texts), dim), dtype=np.float32)
        bs = batch_size or self.default_batch_size
        if texts:
            # Batches of equal token length: sorting by characters left ~14% of every batch padding
            enc = self._tokenize(texts)
            order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
            for i in range(0, len(texts), bs):
                idx = order[i : i + bs]
                out[idx] = self._forward(enc, idx)
        if normalize_embeddings or self.normalises:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        if convert_to_tensor:
            import torch

            res: Any = torch.from_numpy(out)
        else:
            res = out
        return res[0] if single else res
