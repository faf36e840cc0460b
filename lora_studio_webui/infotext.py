"""Infotext: `Lora hashes` (built-in's key and format) and our resolved block weights, and pasting them back.

`LoRA Studio blocks: "name=v1,v2,…; other=…"` is written for every LoRA whose block weights came from a preset
or from the letters R/U/X, so a pasted prompt reproduces the image even after the preset file changed or with
random letters (docs/spec/prompt_syntax.md §6).
"""

from __future__ import annotations

import hashlib
import os

from lib_lora import syntax, tag_weights

from . import env
from .engine import FIELD_BLOCKS, FIELD_HASHES

# elemental entries (lbwe=) that came from a preset, in the inline tag form: `name=ENTRIES | other=ENTRIES`
# (entries hold ';' and ',', so records are cut at ' | ')
FIELD_ELEMENTS = "LoRA Studio elements"
_SEP = " | "

_REMOVE = str.maketrans("", "", ":,;=")


def needs_record(tag, rb) -> bool:
    if rb is None or rb.values is None:
        return False
    if rb.randomised or (rb.source or "").startswith(("preset", syntax.COMPLEMENT)):
        return True
    return any(t.strip().upper().startswith("X") for t in (tag.blocks or "").split(","))


def record(p, act) -> None:
    """Write our infotext fields for this activation into p.extra_generation_params (copy-on-write:
    X/Y/Z cells share that dict through a shallow copy)."""
    params = dict(getattr(p, "extra_generation_params", None) or {})
    hr = bool(getattr(p, "is_hr_pass", False))
    state = getattr(p, "_lora_studio_infotext", None)
    if state is None or not hr:
        state = {"hashes": {}, "blocks": [], "elements": []}
    if env.opt("lora_add_hashes_to_infotext", True):
        for tag, rb, entry in act.entries:
            h = host_shorthash(entry)
            if h:
                state["hashes"][tag.name.translate(_REMOVE)] = h
    seen = {b.split("=", 1)[0] for b in state["blocks"]} if hr else set()
    for tag, rb, entry in act.entries:
        if needs_record(tag, rb) and tag.name not in seen:
            state["blocks"].append(f"{tag.name.translate(_REMOVE)}={','.join(syntax.format_number(v) for v in rb.values)}")
    seen_e = {b.split("=", 1)[0] for b in state.setdefault("elements", [])} if hr else set()
    for tag, rb, entry in act.entries:
        el = getattr(rb, "elements", None)
        if el is not None and el.text and (el.source or "").startswith("preset") and tag.name not in seen_e:
            state["elements"].append(f"{tag.name.translate(_REMOVE).replace('|', '')}={el.text}")
    p._lora_studio_infotext = state
    for key in (FIELD_HASHES, FIELD_BLOCKS, FIELD_ELEMENTS):
        params.pop(key, None) if not hr else None
    if state["hashes"]:
        params[FIELD_HASHES] = ", ".join(f"{k}: {v}" for k, v in state["hashes"].items())
    if state["blocks"]:
        params[FIELD_BLOCKS] = "; ".join(state["blocks"])
    if state["elements"]:
        params[FIELD_ELEMENTS] = _SEP.join(state["elements"])
    p.extra_generation_params = params


_forge_hashes: dict = {}


def host_shorthash(entry) -> str:
    """The `Lora hashes` value the host's own Lora writes and looks up. AUTOMATIC1111: sha256 of the
    safetensors body (entry.shorthash). Forge: its hashes.sha256 ignores use_addnet_hash and hashes the whole
    file, after the trainer's `sshs_model_hash` when the metadata has one; first 12 hex digits either way."""
    from . import forge
    if not forge.active():
        return entry.shorthash()
    try:
        st = os.stat(entry.path)
    except OSError:
        return ""
    key = (str(entry.path), st.st_mtime_ns, st.st_size)
    h = _forge_hashes.get(key)
    if h is None:
        meta = getattr(entry, "metadata", None) or {}
        h = str(meta.get("sshs_model_hash") or "") if str(entry.path).lower().endswith(".safetensors") else ""
        if not h:
            digest = hashlib.sha256()
            try:
                with open(entry.path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                return ""
            h = digest.hexdigest()
        h = _forge_hashes[key] = h[:12]
    return h


def clear(p) -> None:
    params = getattr(p, "extra_generation_params", None)
    if params and (FIELD_BLOCKS in params or FIELD_HASHES in params) and not getattr(p, "is_hr_pass", False):
        params = dict(params)
        params.pop(FIELD_BLOCKS, None)
        params.pop(FIELD_ELEMENTS, None)
        if getattr(p, "_lora_studio_infotext", None):
            params.pop(FIELD_HASHES, None)
        p.extra_generation_params = params
    if not getattr(p, "is_hr_pass", False):
        p._lora_studio_infotext = None


def parse_field(text: str) -> list[tuple[str, list[float]]]:
    """`name=v1,v2,…; other=…` → [(name, values)]; a record with an item that is not a finite number (an
    edited or damaged infotext) is left out, so the pasted tag keeps its own block weights."""
    out = []
    for part in (text or "").split(";"):
        if "=" not in part:
            continue
        name, vals = part.rsplit("=", 1)
        values = [syntax.parse_number(v.strip()) for v in vals.split(",") if v.strip()]
        if values and None not in values:
            out.append((name.strip(), values))
    return out


def restore_prompt(prompt: str, records: list[tuple[str, list[float]]]) -> str:
    """Replace the block weights of each recorded LoRA (in order of appearance) by the recorded values."""
    queues: dict[str, list[list[float]]] = {}
    for name, values in records:
        queues.setdefault(name, []).append(values)

    def fn(tag):
        key = tag.name.translate(_REMOVE)
        if tag.blocks is None or not queues.get(key):
            return None
        values = queues[key].pop(0)
        return syntax.write_tag(tag, tag_weights.ResolvedBlocks(values=values, count=len(values)))

    return syntax.rewrite_prompt(prompt, fn)


def parse_elements_field(text: str) -> list[tuple[str, str]]:
    """`name=ENTRIES | other=ENTRIES` → [(name, inline entries)]; records whose entries do not parse are left
    out (the pasted tag keeps its own lbwe=)."""
    out = []
    for part in (text or "").split(_SEP.strip()):
        name, eq, entries = part.partition("=")
        entries = entries.strip()
        if eq and entries and tag_weights.parse_element_entries(entries, syntax.INLINE_FIELD_SEP)[2] is None:
            out.append((name.strip(), entries))
    return out


def restore_elements(prompt: str, records: list[tuple[str, str]]) -> str:
    """Replace the lbwe= of each recorded LoRA (in order of appearance) by the recorded inline entries."""
    queues: dict[str, list[str]] = {}
    for name, entries in records:
        queues.setdefault(name, []).append(entries)

    def fn(tag):
        key = tag.name.translate(_REMOVE).replace("|", "")
        if tag.elements is None or not queues.get(key):
            return None
        return syntax.edit_key(tag, "lbwe", queues[key].pop(0))

    return syntax.rewrite_prompt(prompt, fn)


def on_infotext_pasted(infotext: str, params: dict) -> None:
    records = parse_field(params.get(FIELD_BLOCKS, ""))
    elements = parse_elements_field(params.get(FIELD_ELEMENTS, ""))
    for key in ("Prompt", "Hires prompt"):
        if params.get(key):
            if records:
                params[key] = restore_prompt(params[key], records)
            if elements:
                params[key] = restore_elements(params[key], elements)
