"""Where the tests find ../shared/data (the real dolly-15k, tokenizers, Pythia configs).

``DOLLY_SHARED_DATA`` points elsewhere; nothing here is ever committed into the repository.
"""

import os
from pathlib import Path

SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DOLLY_JSONL = SHARED / "databricks-dolly-15k.jsonl"
TOKENIZER_DIR = SHARED / "tokenizer" / "gpt-neox-20b"
