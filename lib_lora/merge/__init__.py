"""Merges: checkpoint with checkpoint (`checkpoint.py`), streamed tensor by tensor through `fileio`'s
memory-mapped reader and incremental safetensors writer."""
