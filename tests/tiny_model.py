"""A random-init tiny GPT-NeoX (Pythia architecture) saved with Dolly's tokenizer."""

from pathlib import Path

from tests.shared_data import TOKENIZER_DIR


def save_tiny_model(path: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """A random-init GPT-NeoX (Pythia architecture) with Dolly's tokenizer, saved as safetensors."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from dolly_spark.text.tokenizer import load_hf_tokenizer, save_portable_tokenizer

    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = GPTNeoXForCausalLM(cfg)
    model.save_pretrained(str(path), safe_serialization=True)
    save_portable_tokenizer(tok, path)
    return path
