"""Reading and writing tensor files: safetensors (preferred), gated pickle, atomic writes, hashes.

One package, one concern per module; callers use the names below (`from lib_lora import fileio`):
- `paths`: printable paths and containment inside configured folders (`display_path`, `resolve_inside`);
- `reader`: safetensors headers and tensors, lazily memory-mapped (`MappedTensors`), gated pickles, small text;
- `atomic`: temporary name → rename/link into place, existing-target refusals, locks, stale temporaries;
- `layout`: the safetensors layout (dtype names and order, the header, a tensor's bytes);
- `writer`: the whole-dict and streamed writers, the trainer's precomputed hashes; `pieces`: what a streamed
  writer's producers yield (pooled buffers, file-to-file `FilePiece`s) and its worker threads; `forked`: the
  streamed writer in forked processes; `prefill`: a head-start copy of a mostly repeated source;
- `hashing`: the model hashes AUTOMATIC1111 writes, and a persistent cache of them for merge recipes.
Settings a test or a caller changes (`USE_O_TMPFILE`, the `os` used for renames) live in `atomic`.
"""

from __future__ import annotations

from .atomic import (LOCK_SUFFIX, TMP_SUFFIX, USE_O_TMPFILE, WriteFailed, atomic_write, atomic_write_text,
                     check_target, locked, remove_dead_temps)
from .hashing import cached_model_hash, default_hash_cache_path, file_sha256, legacy_hash, model_hash
from .paths import display_path, file_stamp, resolve_inside
from .reader import (PICKLE_SUFFIXES, MappedTensors, read_metadata, read_safetensors_header, read_small_text,
                     read_tensors)
from .pieces import BufferPool, FilePiece, Pooled
from .writer import atomic_save_safetensors, atomic_save_safetensors_stream, kohya_hashes

__all__ = ["LOCK_SUFFIX", "TMP_SUFFIX", "USE_O_TMPFILE", "WriteFailed", "atomic_write", "atomic_write_text",
           "check_target", "locked", "remove_dead_temps", "cached_model_hash", "default_hash_cache_path",
           "legacy_hash", "model_hash", "file_sha256", "display_path", "file_stamp",
           "resolve_inside", "PICKLE_SUFFIXES", "MappedTensors", "read_metadata", "read_safetensors_header",
           "read_small_text", "read_tensors", "BufferPool", "FilePiece", "Pooled", "atomic_save_safetensors",
           "atomic_save_safetensors_stream", "kohya_hashes"]
