"""The options of every action, one dataclass each (declared with `option(...)`; see `lib_lora.option_spec` for
what is generated from a declaration). The machinery and the TOML helpers are re-exported here, so
`from lib_lora.options import X` keeps working for all of them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field  # noqa: F401  (re-exported: callers use options.MISSING)
from pathlib import Path

from lib_lora.option_spec import (Opt, OptionsError, Spec, add_arguments, fields, from_args, from_toml,  # noqa: F401
                                  from_ui, get, load_toml, option, problems, to_toml, validate, value_problem)
from lib_lora.tomlio import MiniToml as _MiniToml, parse_toml, toml_value as _toml_value  # noqa: F401

# ---- the actions' options ------------------------------------------------------------------------------
# One dataclass per action; the CLI verb, the app and TOML files read these. Names follow the flags.

# bake --dtype: name → torch dtype attribute (text, so this module stays torch-free; lib_lora.merge.bake.DTYPES is
# built from it)
OUTPUT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
DEFAULT_TAGGER_MODELS_DIR = str(Path("models") / "TaggerModels")
DEFAULT_LORA_DIR = str(Path("models") / "Lora")
DEFAULT_CHECKPOINT_DIR = str(Path("models") / "Stable-diffusion")
DEFAULT_IMAGE_DIR = "datasets"

_PRESETS_HELP = ("user block-weight presets file (default: lora_studio_presets.txt in --lora-dir, "
                 "the file the app's Presets tab saves to)")
_SEED_HELP = "seed for R/U block-weight letters (default 0)"


@dataclass
class BakeOptions:
    """`bake`: merge every LoRA tag of a prompt into a checkpoint."""
    base: str = option(help="checkpoint (.safetensors) to start from", metavar="CKPT", label="Base checkpoint")
    prompt: str = option(help='text with LoRA tags, e.g. "<lora:style:0.8:face>"', label="Prompt")
    lora_dir: str = option(help="folder the LoRA names are looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    dtype: str | None = option(None, choices=OUTPUT_DTYPES, label="Output weight type",
                               help="store weights in this type (default: as the base)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, help=_PRESETS_HELP, metavar="FILE", label="User presets file")
    seed: int = option(0, help=_SEED_HELP, label="Seed for R/U letters")
    allow_overflow: bool = option(False, label="Write even if weights overflow",
                                  help="write even if merged weights overflow to ±Inf/NaN (refused by default)")
    quiet: bool = option(False, help="no progress line")


@dataclass
class BakeLoraOptions:
    """`bake-lora`: a new LoRA with one tag's multiplier and block weights built in."""
    prompt: str = option(help='one LoRA tag, e.g. "<lora:style:0.8:face>"', label="LoRA tag")
    lora_dir: str = option(help="folder the LoRA name is looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, help=_PRESETS_HELP, metavar="FILE", label="User presets file")
    seed: int = option(0, help=_SEED_HELP, label="Seed for R/U letters")


@dataclass(kw_only=True)   # fields in the order of the command line, required or not
class MergeOptions:
    """`merge`: two or three checkpoints, A·(1−m)+B·m or A+(B−C)·m with m per block. The modes and their
    one-line descriptions live in lib_lora.merge.checkpoint (MODES, MODE_HELP)."""
    a: str = option(metavar="A", label="Model A",
                    help="primary model (.safetensors); the output has its keys and shapes (an inpainting model "
                         "must be A)")
    b: str = option(metavar="B", label="Model B", help="secondary model")
    c: str | None = option(None, metavar="C", label="Model C (add-diff)",
                           help="tertiary model, subtracted from B (--mode add-diff only)")
    mode: str = option(choices="lib_lora.merge.checkpoint:MODES", choice_help="lib_lora.merge.checkpoint:MODE_HELP",
                       label="Mode", help="how the models are combined")
    alpha: float = option(metavar="M", label="Alpha (m for every block)", help="m for every block")
    block_weights: str | None = option(None, metavar="LIST_OR_PRESET", label="Block weights",
                                       help="m per block instead of --alpha: 26 values for SD1/SD2 or 20 for SDXL "
                                            "(BASE first; 25/19 without BASE), separated by commas, or a preset "
                                            "name with such values")
    base_alpha: float | None = option(None, metavar="X", label="BASE alpha",
                                      help="m for BASE (text encoders and VAE); overrides BASE of --block-weights")
    dtype: str | None = option(None, choices=OUTPUT_DTYPES, label="Output weight type",
                               help="output weights in this type (default: as in A)")
    presets: str | None = option(None, metavar="FILE", label="User presets file",
                                 help="user presets file for --block-weights preset names (default: the shipped "
                                      "merge presets)")
    vae: str | None = option(None, metavar="FILE", label="VAE to bake in",
                             help="VAE file (ldm or diffusers keys) written into the output instead of the merged "
                                  "VAE (default: the VAE is merged with BASE)")
    discard: str | None = option(None, metavar="REGEX", label="Discard weights matching",
                                 help="leave out every key of A this regular expression finds, e.g. model_ema "
                                      "(A's EMA copy, which the WebUI never uses), as the WebUI's merger does")
    allow_pickle: bool = option(False, help="accept .ckpt/.pt inputs (weights only; loaded whole into memory)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    quiet: bool = option(False, help="no progress line")


@dataclass
class ResizeOptions:
    """`resize`: a LoRA to a fixed rank or to the rank a singular-value criterion keeps."""
    src: str = option(flag="", metavar="IN", help="LoRA file (.safetensors) to resize", label="LoRA file")
    rank: int = option(help="new rank; with a dynamic --method the largest rank kept", low=1, label="Rank")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="rank of conv modules (1×1 and 3×3; default: --rank)")
    method: str = option("none", choices="lib_lora.merge.resize:METHODS", label="Method",
                         help="none: fixed rank; sv_ratio: keep S_i > S_0/P; sv_fro: keep a Frobenius share P; "
                              "sv_cumulative: keep a share P of ΣS (ranks as sd-scripts' resize_lora)")
    param: float | None = option(None, metavar="P", label="Parameter",
                                 help="the dynamic method's parameter (sv_ratio > 1; sv_fro, sv_cumulative in (0, 1])")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    verbose: bool = option(False, help="one line per module: rank, alpha, Frobenius share kept")
    quiet: bool = option(False, help="no progress line")


@dataclass
class MergeLorasOptions:
    """`merge-loras`: LoRA + LoRA, each with its multiplier and block weights."""
    tags: list[str] = option(flag="", nargs="+", metavar="TAG",
                             help='LoRA tags, e.g. "<lora:a:0.5>" "<lora:b:0.7:face>"')
    lora_dir: str = option(help="folder the LoRA names are looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    mode: str = option("concat", choices="lib_lora.merge.lora_merge:MODES", label="Mode",
                       help="concat: exact (ranks add up, alpha = rank); svd: best approximation at --rank")
    rank: int | None = option(None, low=1, label="Rank", help="rank of the merged LoRA (--mode svd)")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="rank of 3×3 conv modules with --mode svd (default: --rank)")
    clamp_quantile: float | None = option(None, low=0.0, high=1.0, metavar="Q", label="Clamp quantile",
                                          help="clamp the SVD factors at this quantile of their |values| "
                                               "(sd-scripts uses 0.99; lossy, off by default)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, metavar="FILE", label="User presets file",
                                 help="user block-weight presets file (default: lora_studio_presets.txt in --lora-dir)")
    seed: int = option(0, help="seed for R/U block-weight letters (default 0)", label="Seed for R/U letters")
    quiet: bool = option(False, help="no progress line")


@dataclass
class ExtractOptions:
    """`extract`: tuned − base as a LoRA."""
    base: str = option(help="the original checkpoint (.safetensors)", metavar="A", label="Base model")
    tuned: str = option(help="the fine-tuned checkpoint (.safetensors)", metavar="B", label="Tuned model")
    rank: int = option(help="rank of linear and 1×1 conv modules", low=1, label="Rank")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="also extract ResNet/sampler layers, 3×3 convs at this rank")
    clamp_quantile: float | None = option(None, low=0.0, high=1.0, metavar="Q", label="Clamp quantile",
                                          help="clamp the factors at this quantile of their |values| "
                                               "(sd-scripts uses 0.99; lossy, off by default)")
    min_diff: float = option(0.01, low=0.0, label="Text encoder threshold",
                             help="leave the text encoder out when no weight differs by more (default 0.01)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    quiet: bool = option(False, help="no progress line")


@dataclass
class InspectOptions:
    """`inspect`: what LoRA files contain."""
    files: list[str] = option(flag="", nargs="+", metavar="FILE", help=".safetensors file(s) to inspect")
    json: bool = option(False, help="print a JSON report instead of a table")
    norms: bool = option(True, flag="--no-norms", negate=True, label="Per-block ΔW norms",
                         help="skip the per-block ΔW norms (faster)")
    hash: bool = option(True, flag="--no-hash", negate=True, label="Hash the file body",
                        help="skip hashing the file body")
    allow_pickle: bool = option(False, help="also read .pt/.ckpt/.bin files (weights-only unpickling)")


@dataclass
class TagFolderOptions:
    """`tag`: caption a folder of images with a WD14 tagger. Choice lists live in the tagger modules."""
    dir: str = option(flag="", metavar="DIR", help="folder of images (or one image)", label="Image folder")
    # model
    model: str = option(flag="--model-dir", aliases=("--model",), metavar="M", group="model", label="Model",
                        help="folder holding a tagger: WD14 (model.onnx + selected_tags.csv), Z3D-E621 "
                             "(model.onnx + tags-selected.csv) or DeepDanbooru (deepdanbooru.onnx + tags.txt); or a "
                             "model name (e.g. wd-vit-tagger-v3, z3d-e621-convnext, deepdanbooru-v3) or Hugging "
                             "Face repo id, looked up in --models-root, then the HF cache, then downloaded")
    models_root: str = option(DEFAULT_TAGGER_MODELS_DIR, metavar="DIR", group="model",
                              help="where named models live and are downloaded to "
                                   f"(default: ./{DEFAULT_TAGGER_MODELS_DIR})")
    revision: str | None = option(None, group="model",
                                  help="Hugging Face revision to download (default: the pinned one)")
    offline: bool = option(False, group="model", help="never download; use local files only")
    provider: str = option("auto", choices="lib_lora.tagger.runtime:PROVIDER_CHOICES", group="model",
                           label="Provider", help="onnxruntime execution provider; an explicit GPU that cannot "
                                                  "run is an error (default: auto)")
    threads: int = option(0, group="model", low=0,
                          help="onnxruntime CPU threads (default 0: onnxruntime's choice)")
    # tags
    general_threshold: float = option(0.35, group="tags", label="General threshold (keep p >)",
                                      help="keep general tags with p > this (0.35)")
    character_threshold: float = option(0.85, group="tags", label="Character threshold (> 1 disables)",
                                        help="keep characters with p > this (0.85; > 1 disables)")
    general_mcut: bool = option(False, group="tags", label="MCut for general tags",
                                help="MCut threshold for general tags")
    character_mcut: bool = option(False, group="tags", label="MCut for characters",
                                  help="MCut threshold for characters (at least 0.15)")
    include_characters: bool = option(True, flag="--no-characters", negate=True, group="tags",
                                      label="Include characters", help="leave character tags out")
    characters_first: bool = option(False, group="tags", label="Characters first",
                                    help="character tags before general tags")
    sort: str = option("confidence", choices="lib_lora.tagger.postprocess:SORTS", group="tags", label="Order",
                       help="tag order (default: confidence)")
    replace_underscores: bool = option(True, flag="--keep-underscores", negate=True, group="tags",
                                       label="Underscores → spaces (not emoticons)",
                                       help="write long_hair instead of long hair")
    escape_brackets: bool = option(False, group="tags", label="Escape brackets \\( \\)",
                                   help=r"write \( \) as in prompts")
    rating: str = option("none", choices="lib_lora.tagger.postprocess:RATING_MODES", group="tags",
                         label="Write rating tag", help="write the rating tag first/last (default: none)")
    max_tags: int = option(0, group="tags", label="Max tags (0 = all)", help="at most N model tags (0 = no limit)")
    exclude: str = option("", group="tags", label="Exclude tags (comma-separated; any case, _ or space)",
                          help="comma-separated tags to leave out (underscore/space/case-insensitive)")
    exclude_regex: list[str] = option([], metavar="RE", group="tags",
                                      help="full-match regex to leave out; repeatable")
    replace: list[str] = option([], metavar="OLD=NEW", group="tags", help="rename a tag; repeatable")
    prepend: str = option("", group="tags", label="Prepend tags (e.g. trigger word)",
                          help="comma-separated tags written first (e.g. a trigger word)")
    append: str = option("", group="tags", label="Append tags", help="comma-separated tags written last")
    weights: bool = option(False, group="tags", help="write (tag:0.87) with confidences")
    # files
    existing: str = option("skip", choices="lib_lora.tagger.captions:EXISTING_MODES", group="files",
                           widget="radio", label="Existing caption files",
                           help="what to do with an existing caption (default: skip, the image is not even tagged)")
    caption_ext: str = option(".txt", group="files", label="Caption extension",
                              help="caption extension (default .txt): .txt, .caption or another plain one of "
                                   "lowercase letters and digits, at most 10; extensions of programs, scripts, "
                                   "configs, web pages, models and images are refused")
    output_dir: str | None = option(None, group="files", label="Output folder (empty = beside the images)",
                                    help="write captions here, mirroring sub-folders (default: beside the images)")
    recursive: bool = option(False, group="files", label="Include sub-folders", help="include sub-folders")
    ext: str = option("png,jpg,jpeg,webp,bmp", group="files",
                      help="image extensions (default: png,jpg,jpeg,webp,bmp)")
    json: bool = option(False, group="files", label="JSON with confidences",
                        help="also write <image>.json with all confidences and ratings")
    trailing_newline: bool = option(False, group="files", help="end caption files with a newline")
    frequency: int = option(30, metavar="N", group="files", help="print the N most frequent tags (0 = all)")
    frequency_file: str | None = option(None, metavar="FILE", group="files",
                                        help="write the full 'tag: count' summary to FILE")
    # speed
    batch_size: int = option(0, group="speed", label="Batch size (0 = auto: 8 on GPU, 1 per CPU stream)",
                             help="images per inference; 0 = auto: 8 on a GPU, 1 per concurrent stream on CPU "
                                  "(fixed-batch models always use their own)")
    streams: int = option(0, group="speed",
                          help="concurrent inference runs (default: 1 on a GPU, one per CPU core up to 4)")
    workers: int = option(0, group="speed", help="decoding threads (default: auto)")
    resize: str = option("bicubic", choices="lib_lora.tagger.preprocess:RESIZE_METHODS", group="speed",
                         help="resize filter (default: bicubic)")
    quiet: bool = option(False, group="speed", help="no progress bar")


@dataclass
class AppOptions:
    """`ui`: the standalone app."""
    lora_dir: list[str] = option([], metavar="DIR",
                                 help=f"LoRA/LyCORIS folder (must exist); repeat for several (default: "
                                      f"./{DEFAULT_LORA_DIR}, created if missing)")
    checkpoint_dir: list[str] = option([], metavar="DIR",
                                       help=f"checkpoint folder the Merge tab lists and writes into (must exist); "
                                            f"repeat for several (default: ./{DEFAULT_CHECKPOINT_DIR} when it exists)")
    image_dir: list[str] = option([], metavar="DIR",
                                  help="folder the Tagger tab may read images from and write captions into "
                                       "(must exist); repeat for several (default: ./" + DEFAULT_IMAGE_DIR +
                                       ", created if missing); paths outside are refused")
    tagger_models_dir: str | None = option(None, metavar="DIR",
                                           help=f"WD14 tagger models folder (must exist; default: "
                                                f"./{DEFAULT_TAGGER_MODELS_DIR}, created if missing)")
    presets_file: str | None = option(None, metavar="FILE",
                                      help="user block-weight presets file (default: lora_studio_presets.txt in the "
                                           "first LoRA folder; the CLI's bake verbs read the same file)")
    port: int = option(7870, help="port to serve on, 1-65535 (default: 7870)")
    listen: bool = option(False, help="bind 0.0.0.0 (reachable from the network); needs --auth or --auth-file, "
                                      "and file writes then need --allow-writes")
    auth: str | None = option(None, metavar="USER:PASSWORD", help="require this login (needed with --listen)")
    auth_file: str | None = option(None, metavar="FILE",
                                   help="require a login from this file: one USER:PASSWORD per line, '#' comments")
    allow_writes: bool = option(False, help="with --listen: allow actions that write files (saving presets, "
                                            "captions, downloads)")
    open_browser: bool = option(True, flag="--no-browser", negate=True,
                                help="do not open a browser tab (never opened when no display is available)")
