"""LBW's block axes for the WebUI's X/Y/Z plot, and its Effective Block Analyzer as a script.

- "Original Weights": values are preset names; the varied tag (the one written `XYZ`, else the first LoRA
  tag) gets that preset. Two Original Weights axes in one cell add up as LBW's combined plot: where both
  presets weigh a block, the second one's value there is dropped.
- "LoRA block ID": values are block IDs and ranges (`IN04-OUT05`, `NOT IN09-OUT02`, `BASE`); the named
  blocks of the varied tag get a low value (`=v` after the IDs, default 0), the others keep the tag's
  weights (1 when it has none; an Original Weights axis applied before sets them).
- Analyzer: the all-1 image once, then one image per block at the low value; scores and the
  difference | modified | source grid come from lib_lora.analyzer.

Like every axis (xyz.py), these rewrite tag text: A1111 caches conditioning by prompt text. A `ZYX` tag
follows by itself: it is resolved against the varied tag at activation (syntax.link_complements). Between
two cells only the blocks whose weight changed are rewritten (the patcher keeps the other layers), so each
analyzer cell costs one block's rescaling, not a whole LoRA apply.
"""

from __future__ import annotations

from lib_lora import analyzer, syntax
from lib_lora.blocks import ARCH_FORMATS, FORMATS, SLOT, block_ids_problem

from . import env
from .engine import ENGINE

# lora_studio_webui.xyz (its label prefix, prompt fields and value checks), handed over by its register():
# importing it here would make an import cycle.
_base = None
OW_NAME, ID_NAME = "LoRA original weights", "LoRA block ID"
DEFAULT_LOW = 0.0


def _prefix() -> str:
    return _base.LABEL_PREFIX if _base is not None else ""


def _require_tag(p, what):
    if not syntax.parse_prompt(getattr(p, "prompt", "")):
        raise RuntimeError(f"{_prefix()}{what}: the prompt has no <lora:…> tag to vary; add one.")


def model_arch() -> str | None:
    """The loaded model's family as far as the block formats care ("sdxl" or None = SD1/SD2 formats)."""
    model = env.loaded_model() if hasattr(env, "loaded_model") else None
    return "sdxl" if getattr(model, "is_sdxl", False) else None


def _rewrite_varied(p, fn) -> None:
    """Replace the varied tag (syntax.varied_index) of the prompt and a non-empty hires prompt by fn(tag)."""
    for attr in ("prompt", "hr_prompt"):   # as xyz.PROMPT_FIELDS
        text = getattr(p, attr, None)
        if not isinstance(text, str) or not text:
            continue
        target = syntax.varied_index(syntax.parse_prompt(text))
        seen = []

        def one(tag):
            seen.append(tag)
            return fn(tag) if len(seen) - 1 == target else None

        new = syntax.rewrite_prompt(text, one)
        if new != text:
            setattr(p, attr, new)


def _varied(p):
    tags = syntax.parse_prompt(getattr(p, "prompt", ""))
    i = syntax.varied_index(tags)
    return tags[i] if i is not None else None


def current_tokens(tag, presets, arch) -> list[str] | None:
    """The varied tag's block weights as tokens (a preset resolved for `arch`); None = no block weights."""
    blocks = None if tag is None else tag.blocks
    if blocks is None or blocks == syntax.VARIED and presets.lookup(blocks, arch) is None:
        return None
    if syntax.is_block_list(blocks):
        return [t.strip() for t in blocks.split(",")]
    hit = presets.lookup(blocks, arch)
    return list(hit.tokens) if hit is not None else None


# -- Original Weights ---------------------------------------------------------------------------------
def combine(first: list[str], second: list[str]) -> list[str]:
    """LBW's combined Original Weights cell: first + second, the second's value dropped where both weigh."""
    out = []
    for a, b in zip(first, second):
        x, y = syntax.parse_number(a), syntax.parse_number(b)
        if x is None or y is None:          # a letter: the first preset's token stands
            out.append(a)
            continue
        out.append(syntax.format_number(round(x + (0.0 if x != 0 and y != 0 else y), 9)))
    return out


def apply_original(p, x, xs):
    name = str(x).strip()
    done = list(getattr(p, "_lora_studio_original", ()))
    p._lora_studio_original = done + [name]   # set on the cell's copy only
    if not done:
        _rewrite_varied(p, lambda tag: syntax.edit_blocks(tag, name))
        return
    presets, arch = ENGINE.presets(), model_arch()
    first = current_tokens(_varied(p), presets, arch)
    second = presets.get(name, arch)
    if first is None or second is None or len(first) != len(second):
        raise RuntimeError(f"{_prefix()}LoRA original weights: '{done[-1]}' and '{name}' have different value "
                           f"counts and cannot be added; use presets of one format on both axes.")
    _rewrite_varied(p, lambda tag: syntax.edit_blocks(tag, ",".join(combine(first, second))))


def confirm_original(p, xs):
    _base._require_values(xs, "LoRA original weights", choices=True)
    _require_tag(p, "LoRA original weights")
    presets = ENGINE.presets()
    for v in xs:
        if presets.lookup(str(v)) is None:
            close = presets.close_matches(str(v))
            raise RuntimeError(f"{_prefix()}LoRA original weights: unknown preset '{v}'"
                               + (f" (close: {', '.join(close)})" if close else "") + "; pick a preset name.")


def choices_original():
    try:
        return ENGINE.presets().names()
    except Exception:
        return []


# -- block ID -----------------------------------------------------------------------------------------
def parse_block_value(value: str) -> tuple[frozenset, float, frozenset]:
    """`IN04-OUT05`, `NOT IN09-OUT02`, `BASE=0.5` → (slots to set, low value, the slots named as IDs or range
    ends). A range covers the blocks between its ends that the list has (LBW: positions in the format).
    ValueError with the reason."""
    text, _, low_text = str(value).partition("=")
    low = DEFAULT_LOW
    if low_text.strip():
        low = syntax.parse_number(low_text.strip())
        if low is None:
            raise ValueError(f"'{value}': the value after '=' is not a number (e.g. IN04-OUT05=0.5)")
    slots, neg, problem = block_ids_problem(text.replace(",", " "))
    if problem:
        raise ValueError(f"'{value}': {problem}")
    if slots is None or (not slots and not neg):
        raise ValueError(f"'{value}': no block named (e.g. IN04, IN04-OUT05, NOT M00)")
    named = frozenset(SLOT[e] for w in text.replace(",", " ").split() if w.upper() != "NOT"
                      for e in w.upper().split("-"))
    if neg:
        slots = frozenset(range(26)) - slots
    return frozenset(slots), low, named


def block_tokens(base: list[str] | None, slots: frozenset, low: float, arch: str | None,
                 named: frozenset = frozenset()) -> list[str]:
    """The weight list with `slots` at `low` and the other blocks as in `base` (None = all 1). The list
    keeps base's format unless a block named by ID is not in it (then the full format: 26 / 20)."""
    small, full = ARCH_FORMATS.get(arch or "sd1", (17, 26))
    count = len(base) if base is not None else small
    present = slots & set(FORMATS[full])
    if not (named & set(FORMATS[full])) <= set(FORMATS[count]):
        by_slot = dict(zip(FORMATS[count], base)) if base is not None else {}
        base = [by_slot.get(s, "0" if base is not None else "1") for s in FORMATS[full]]
        count = full
    base = base if base is not None else ["1"] * count
    low_text = syntax.format_number(low)
    return [low_text if s in present else t for s, t in zip(FORMATS[count], base)]


def apply_block_id(p, x, xs):
    slots, low, named = parse_block_value(str(x))
    arch = model_arch()
    base = current_tokens(_varied(p), ENGINE.presets(), arch)
    value = ",".join(block_tokens(base, slots, low, arch, named))
    _rewrite_varied(p, lambda tag: syntax.edit_blocks(tag, value))


def confirm_block_id(p, xs):
    _base._require_values(xs, "LoRA block ID", choices=False)
    _require_tag(p, "LoRA block ID")
    full = set(FORMATS[ARCH_FORMATS.get(model_arch() or "sd1", (17, 26))[1]])
    for v in xs:
        try:
            slots = parse_block_value(str(v))[0]
        except ValueError as e:
            raise RuntimeError(f"{_prefix()}LoRA block ID: {e}") from None
        if not slots & full:
            raise RuntimeError(f"{_prefix()}LoRA block ID: '{v}' names no block of this model; use IDs "
                               f"of its format ({', '.join(analyzer.block_names(model_arch(), full=True))}).")


def axes(xyz, base):
    """The axes for the WebUI's X/Y/Z module `xyz`; `base` is lora_studio_webui.xyz (labels, checks)."""
    global _base
    _base = base
    A = xyz.AxisOption
    return [
        A(base.LABEL_PREFIX + OW_NAME, str, apply_original, format_value=base.format_label, confirm=confirm_original,
          choices=choices_original),
        A(base.LABEL_PREFIX + ID_NAME, str, apply_block_id, format_value=base.format_label, confirm=confirm_block_id),
    ]


# -- Effective Block Analyzer ---------------------------------------------------------------------------
def analysis_prompts(prompt: str, blocks: list[str], low: float, arch: str | None) -> tuple[str, list[str]]:
    """(source prompt: the varied tag at all 1, [prompt with block b at `low`, others 1, for b in blocks])."""
    class _P:
        pass

    def with_value(value: str) -> str:
        q = _P()
        q.prompt = prompt
        _rewrite_varied(q, lambda tag: syntax.edit_blocks(tag, value))
        return q.prompt

    ones = ",".join(["1"] * ARCH_FORMATS.get(arch or "sd1", (17, 26))[0])
    cells = []
    for b in blocks:
        slots, _low, named = parse_block_value(b)
        cells.append(with_value(",".join(block_tokens(None, slots, low, arch, named))))
    return with_value(ones), cells


def run_analysis(p, render, blocks: list[str] | None = None, low: float = 0.5, threshold: int = 20,
                 white: bool = False, swap: bool = False):
    """Render the source and one image per block (`render(p_copy) -> PIL image`), then score and grid them.
    Returns (grid image, [(block, score)], images)."""
    from copy import copy
    arch = model_arch()
    names = blocks or analyzer.block_names(arch)
    _require_tag(p, "Effective Block Analyzer")
    for b in names:
        try:
            parse_block_value(b)
        except ValueError as e:
            raise RuntimeError(f"{_prefix()}Effective Block Analyzer: {e}") from None
    source_prompt, prompts = analysis_prompts(p.prompt, names, low, arch)

    def one(prompt):
        pc = copy(p)
        pc.prompt = prompt
        if getattr(pc, "hr_prompt", ""):
            pc.hr_prompt = ""   # the hires pass follows the prompt
        return render(pc)

    source = one(source_prompt)
    modified = [one(q) for q in prompts]
    result = analyzer.analyze(source, modified, names, threshold=threshold, white=white, low=low)
    grid = analyzer.grid(result, swap=swap)
    return grid, [(s.block, s.score) for s in result.scores], [source] + modified


# -- the analyzer as a selectable script (Script dropdown of txt2img / img2img) --------------------------
ANALYZER_TITLE = "LoRA Studio: Effective Block Analyzer"
ANALYZER_LOW = 0.5   # LBW's default range "0.5,1": the block at 0.5, every other block at 1


def _render(pc):
    from modules.processing import process_images
    pc.n_iter, pc.batch_size = 1, 1
    res = _render.last = process_images(pc)
    return res.images[0]


def run_script(p, blocks_text, low, threshold, white, swap):
    """The script's run: the grid first, then source and modified images; the scores in the info text."""
    blocks = [b.strip() for b in str(blocks_text or "").split(",") if b.strip()] or None
    if str(getattr(p, "seed", -1)) in ("-1", "None", ""):   # one seed for every render, or nothing compares
        import random
        p.seed = random.randrange(4294967294)
    grid, scores, images = run_analysis(p, _render, blocks, float(low), int(threshold), bool(white), bool(swap))
    res = _render.last
    info = "Effective blocks: " + ", ".join(f"{b} {round(s, 3)}%" for b, s in sorted(scores, key=lambda x: -x[1]))
    res.images = [grid] + list(images)
    res.infotexts = [f"{res.infotexts[0]}\n{info}" if getattr(res, "infotexts", None) else info] * len(res.images)
    res.info = info
    return res


try:
    from modules import scripts as _scripts
except ImportError:           # imported outside the WebUI (docs, checks): no script class
    _scripts = None

if _scripts is not None:
    class BlockAnalyzerScript(_scripts.Script):
        def title(self):
            return ANALYZER_TITLE

        def show(self, is_img2img):
            return True

        def ui(self, is_img2img):
            import gradio as gr
            tab = "img2img" if is_img2img else "txt2img"
            gr.Markdown("Renders the prompt's first LoRA (or the one written `XYZ`) with each block at the low "
                        "value and all others at 1, against the all-1 image; scores = share of pixel values that "
                        "differ by more than the threshold.")
            blocks = gr.Textbox(label="Blocks (empty: 17 for SD1/SD2, 12 for SDXL; IDs, ranges, NOT)",
                                elem_id=f"lora_studio_analyzer_blocks_{tab}")
            with gr.Row():
                low = gr.Number(value=ANALYZER_LOW, label="Low value", elem_id=f"lora_studio_analyzer_low_{tab}")
                threshold = gr.Number(value=analyzer.DEFAULT_THRESHOLD, precision=0, label="Difference threshold",
                                      elem_id=f"lora_studio_analyzer_threshold_{tab}")
                white = gr.Checkbox(False, label="Difference on white", elem_id=f"lora_studio_analyzer_white_{tab}")
                swap = gr.Checkbox(False, label="Blocks as columns", elem_id=f"lora_studio_analyzer_swap_{tab}")
            return [blocks, low, threshold, white, swap]

        def run(self, p, blocks, low, threshold, white, swap):
            return run_script(p, blocks, low, threshold, white, swap)
