"""Tiny randomly initialised decoders for fast tests of decoding mechanics.

The tokenizer is a byte-level BPE trained in milliseconds on a fixed text, so no file from a
hub is needed; the model is a 2-layer Llama (or Qwen2) with random weights.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. She spent eleven years there. "
    "What is the capital of France? Paris is the capital of France. "
    "Question: Answer: Context: The answer is unknown. 0 1 2 3 4 5 6 7 8 9 . , ! ? ; : ' \" ( ) \n"
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_decoder(path: Path, *, arch: str = "llama", seed: int = 0, vocab_size: int = 400,
                       hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """Write a tiny random causal LM + tokenizer to ``path`` (idempotent); return ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    cfg_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    cfg = cfg_cls(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    return path
