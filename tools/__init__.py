"""Development tools: not part of the runtime wheel (setup.py packages dolly_spark only)."""
