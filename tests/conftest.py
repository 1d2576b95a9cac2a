import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DOLLY_JSONL = SHARED / "databricks-dolly-15k.jsonl"
TOKENIZER_DIR = SHARED / "tokenizer" / "gpt-neox-20b"

# Offline by construction: the hub is unreachable here, and tests must not try it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DOLLY_TOKENIZER", str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def spark():
    from dolly_spark.session import get_spark, stop_embedded

    session = get_spark("dolly_spark_tests")
    yield session
    stop_embedded()


def save_tiny_model(path: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """A random-init GPT-NeoX (Pythia architecture) with Dolly's tokenizer, saved as safetensors."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from dolly_spark.tokenizer import load_hf_tokenizer

    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_positions,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPTNeoXForCausalLM(cfg)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Untrained tiny model directory: enough for logging, registry, scoring and plumbing tests."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")
