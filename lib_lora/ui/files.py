"""Files of the Merge tab's runs (the LoRA tools' and the Training tab's too): models are picked from a list the
server made (ctx.checkpoint_list in the WebUI, else the .safetensors files of ctx.checkpoint_dirs), so a request
cannot name another file; output names resolve inside the configured folders, and an existing output is replaced
only when asked; after a write the host is asked to list the new file."""

from __future__ import annotations

from pathlib import Path

from lib_lora.errors import LoraStudioError
from lib_lora.options import OUTPUT_DTYPES

SUFFIX = ".safetensors"      # the UI never loads pickles
AS_INPUT = "as input"        # the dtype choice that keeps the input's types (dtype None)
DTYPE_CHOICES = [AS_INPUT, *OUTPUT_DTYPES]
NO_CHECKPOINT_DIR = "No checkpoint folder is configured; start the app with --checkpoint-dir DIR."


def checkpoint_choices(ctx) -> dict[str, Path]:
    """{shown name: path} of the .safetensors checkpoints: the WebUI's own list when it gives one
    (ctx.checkpoint_list), else the files found in ctx.checkpoint_dirs (names relative to their folder)."""
    return _choices(ctx.checkpoint_list, ctx.checkpoint_dirs, "checkpoint")


def _choices(host_list, dirs, what: str) -> dict[str, Path]:
    if host_list is not None:
        listed = host_list() or {}
        return {str(k): Path(v) for k, v in listed.items() if str(v).lower().endswith(SUFFIX)}
    from lib_lora.library import Library

    lib = Library(lambda: dirs, (SUFFIX,), what, headers=False)
    lib.scan()
    found: dict = {}
    for f in lib.files:
        found.setdefault(f.relative, f.path)
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


MERGED_VAE = "merged (BASE)"   # the VAE picker's first choice: the VAE is merged with the BASE weight


def vae_dirs(ctx) -> list[Path]:
    """Standalone: the `VAE` folder beside each checkpoint folder that has one (the WebUI's models/VAE next to
    models/Stable-diffusion)."""
    return [d.parent / "VAE" for d in ctx.checkpoint_dirs if d.is_dir() and (d.parent / "VAE").is_dir()]


def vae_choices(ctx) -> dict[str, Path]:
    """{shown name: path} of the .safetensors VAE files: the WebUI's VAE list (ctx.vae_list), else `vae_dirs`."""
    return _choices(ctx.vae_list, vae_dirs(ctx), "VAE")


def vae_names(ctx) -> list[str]:
    """The VAE picker's choices: MERGED_VAE first."""
    try:
        return [MERGED_VAE, *vae_choices(ctx)]
    except LoraStudioError:
        return [MERGED_VAE]


def vae_path(ctx, name) -> str | None:
    """A picked VAE name → its file (None: merged with BASE); only names of the current list are accepted."""
    if name in (None, "", MERGED_VAE):
        return None
    found = vae_choices(ctx).get(str(name))
    if found is None:
        raise LoraStudioError(f"VAE '{name}' is not in the VAE list (only .safetensors files are offered); press "
                              f"Refresh and pick it again.")
    return str(found)


def checkpoint_names(ctx) -> list[str]:
    """The names a model picker offers; none when the folders cannot be listed."""
    try:
        return list(checkpoint_choices(ctx))
    except LoraStudioError:
        return []


def checkpoint_path(ctx, name, role: str) -> str:
    """A picked model name → its file; only names of the current list are accepted."""
    if ctx.checkpoint_list is None and not ctx.checkpoint_dirs:
        raise LoraStudioError(NO_CHECKPOINT_DIR)
    if not name:
        raise LoraStudioError(f"Pick model {role} first.")
    found = checkpoint_choices(ctx).get(str(name))
    if found is None:
        raise LoraStudioError(f"Model {role} '{name}' is not in the checkpoint list (only .safetensors files are "
                              f"offered); press Refresh and pick it again.")
    return str(found)


def output_path(ctx, name, roots, what: str, overwrite: bool) -> str:
    """An output name → a path inside `roots` ('.safetensors' added); an existing file only with `overwrite`."""
    from lib_lora.fileio import resolve_inside

    text = str(name or "").strip()
    if not text:
        raise LoraStudioError(f"Type a name for the output {what} first.")
    if not roots:
        raise LoraStudioError(NO_CHECKPOINT_DIR if what == "checkpoint" else f"No {what} folder is configured.")
    if not text.lower().endswith(SUFFIX):
        text += SUFFIX
    path = resolve_inside(text, roots, f"output {what}")
    if path.is_dir():
        raise LoraStudioError(f"Output '{text}' is a folder; type a file name.")
    if path.exists() and not overwrite:
        raise LoraStudioError(f"Output '{text}' already exists; tick 'Replace the output file' to overwrite it, "
                              f"or choose another name.")
    if not path.parent.is_dir():
        raise LoraStudioError(f"Folder '{path.parent}' does not exist; create it first or type a name without it.")
    return str(path)


def output_dtype(choice):
    """The dtype picker's value → the core's dtype (None keeps the input's types)."""
    return None if choice in (None, "", AS_INPUT) else choice


def refresh_note(fn, what: str) -> str:
    """Let the host list a new file; a failure there is a note, the file is written."""
    if fn is None:
        return ""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 — the file exists; only the host's list is stale
        return f" (the {what} list could not be refreshed: {exc}; press its refresh button)"
    return ""


def model_arch(path: str) -> str:
    """"sd1" / "sd2" / "sdxl" / "unknown" of a checkpoint, from its header."""
    from lib_lora import fileio
    from lib_lora.merge.checkpoint import model_arch as arch_of

    with fileio.MappedTensors(path) as reader:
        return arch_of(reader)
