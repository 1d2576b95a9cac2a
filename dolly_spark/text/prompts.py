"""Dolly 2.0 prompt templates: the one module that training, gold and inference share.

Strings match databricks-dolly's ``training/consts.py`` byte for byte.
"""

from __future__ import annotations

INTRO_BLURB = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_KEY = "### Instruction:"
INPUT_KEY = "Input:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"
RESPONSE_KEY_NL = f"{RESPONSE_KEY}\n"

# Added to the tokenizer as single special tokens, in this order (ids 50277..50279 on GPT-NeoX-20B).
DOLLY_SPECIAL_TOKENS = (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY)
# Any of these inside user text would be read as template structure.
TEMPLATE_KEYS = (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY)


def format_prompt(instruction: str, context: str | None = None) -> str:
    """Generation prompt: everything up to and including ``### Response:\\n``."""
    parts = [INTRO_BLURB, "", INSTRUCTION_KEY, instruction, ""]
    if context:
        parts += [INPUT_KEY, context, ""]
    parts += [RESPONSE_KEY_NL]
    return "\n".join(parts)


def format_text(instruction: str, context: str | None, response: str) -> str:
    """Full training text: prompt, response, blank line, ``### End``."""
    return f"{format_prompt(instruction, context)}{response}\n\n{END_KEY}"


def contains_template_key(text: str | None) -> bool:
    return bool(text) and any(k in text for k in TEMPLATE_KEYS)
