"""Tagger models (WD14, Z3D-E621, DeepDanbooru): where the two files come from (local folder, HF cache,
download), which family a folder holds, and the ONNX session (provider chosen and verified, input
name/size/batch read from the model, unload)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib_lora.errors import LoraStudioError
from lib_lora.tagger import runtime
from lib_lora.tagger.preprocess import DEEPDANBOORU_PIXELS, WD14_PIXELS, Pixels
from lib_lora.tagger.tags import TagSet, load_tags

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"


@dataclass(frozen=True)
class Family:
    """What differs between tagger families with the same interface (one NHWC image input, one output of
    probabilities, one label per output column): file names, pixel format, label-file format."""
    name: str
    label: str
    model_files: tuple           # accepted .onnx names, the first is the one downloaded
    tags_file: str
    pixels: Pixels
    require_category: bool = True

    @property
    def model_file(self) -> str:
        return self.model_files[0]


FAMILIES = {
    "wd14": Family("wd14", "WD14", (MODEL_FILE,), TAGS_FILE, WD14_PIXELS),
    # Z3D-E621: WD14's pixel contract (BGR 0–255, white pad, 448); labels in tags-selected.csv.
    "z3d-e621": Family("z3d-e621", "Z3D-E621", (MODEL_FILE,), "tags-selected.csv", WD14_PIXELS,
                       require_category=False),
    # DeepDanbooru (ONNX port of the Keras model): RGB 0–1, black pad, 512; one tag per line in tags.txt.
    "deepdanbooru": Family("deepdanbooru", "DeepDanbooru", ("deepdanbooru.onnx", MODEL_FILE), "tags.txt",
                           DEEPDANBOORU_PIXELS),
}


@dataclass(frozen=True)
class KnownModel:
    repo: str
    revision: str          # pinned: v3 `main` was replaced by new weights on 2024-03-16
    threshold_hint: float | None   # the card's P=R threshold (shown as a hint; defaults stay 0.35/0.85)
    family: str = "wd14"


# v2 repos are pinned to their `v2.0` tag; v3 repos to `v2.0` (the "Model v2.0" weights). Override with revision=.
KNOWN_MODELS = {
    "wd-eva02-large-tagger-v3": KnownModel("SmilingWolf/wd-eva02-large-tagger-v3", "v2.0", 0.5296),
    "wd-vit-large-tagger-v3": KnownModel("SmilingWolf/wd-vit-large-tagger-v3", "v2.0", None),
    "wd-vit-tagger-v3": KnownModel("SmilingWolf/wd-vit-tagger-v3", "v2.0", None),
    "wd-convnext-tagger-v3": KnownModel("SmilingWolf/wd-convnext-tagger-v3", "v2.0", 0.2682),
    "wd-swinv2-tagger-v3": KnownModel("SmilingWolf/wd-swinv2-tagger-v3", "v2.0", 0.2653),
    "wd-v1-4-moat-tagger-v2": KnownModel("SmilingWolf/wd-v1-4-moat-tagger-v2", "v2.0", None),
    "wd-v1-4-swinv2-tagger-v2": KnownModel("SmilingWolf/wd-v1-4-swinv2-tagger-v2", "v2.0", 0.3771),
    "wd-v1-4-convnextv2-tagger-v2": KnownModel("SmilingWolf/wd-v1-4-convnextv2-tagger-v2", "v2.0", 0.3710),
    "wd-v1-4-convnext-tagger-v2": KnownModel("SmilingWolf/wd-v1-4-convnext-tagger-v2", "v2.0", 0.3685),
    "wd-v1-4-vit-tagger-v2": KnownModel("SmilingWolf/wd-v1-4-vit-tagger-v2", "v2.0", 0.3537),
    # Not SmilingWolf's: no release tags to pin, so `main` (pass revision= to pin a commit).
    "z3d-e621-convnext": KnownModel("toynya/Z3D-E621-Convnext", "main", None, "z3d-e621"),
    "deepdanbooru-v3": KnownModel("chinoll/deepdanbooru", "main", None, "deepdanbooru"),
}
DEFAULT_MODEL = "wd-vit-tagger-v3"        # ViT-B: the quick one for CPUs
DEFAULT_GPU_MODEL = "wd-eva02-large-tagger-v3"   # the most accurate, when a GPU runs it
PROBE_TIMEOUT_S = 3.0


class ModelNotFound(LoraStudioError):
    """The model files are not on this computer and cannot be downloaded."""


class ModelFormatError(LoraStudioError):
    """model.onnx is not an image tagger with the expected interface."""


@dataclass
class ModelFiles:
    name: str
    onnx: Path
    tags: Path
    source: str            # "local folder", "HF cache", "downloaded"
    threshold_hint: float | None = None
    family: str = "wd14"


def _label_files_hint() -> str:
    return "; ".join(f"{f.label}: {f.tags_file}" for f in FAMILIES.values())


def _pair(folder: Path, strict: bool = True) -> tuple[Path, Path, str] | None:
    """(model, labels, family) found in `folder`, None if it holds neither; a model without labels (or
    labels without their model) is an error (strict) or "not there yet" (a download target)."""
    onnx_any = next((folder / n for f in FAMILIES.values() for n in f.model_files if (folder / n).is_file()), None)
    for fam in FAMILIES.values():
        tags = folder / fam.tags_file
        if not tags.is_file():
            continue
        onnx = next((folder / n for n in fam.model_files if (folder / n).is_file()), None)
        if onnx is not None:
            return onnx, tags, fam.name
        if strict:
            raise ModelNotFound(f"{folder} has {fam.tags_file} but no {' or '.join(fam.model_files)}: put the "
                                f"{fam.label} model file there too.")
        return None
    if strict and onnx_any is not None:
        raise ModelNotFound(f"{folder} has {onnx_any.name} but no label file: put {TAGS_FILE} there too "
                            f"({_label_files_hint()}).")
    return None


def list_local_models(models_dir) -> list[str]:
    """Sub-folders of the models folder that hold a model and its labels (any family), plus the known names."""
    found = []
    d = Path(models_dir)
    if d.is_dir():
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and _pair(sub, strict=False):
                found.append(sub.name)
    return found + [n for n in KNOWN_MODELS if n not in found]


def default_model(available_providers: list[str] | None = None) -> str:
    """The model that suits this computer: the large EVA02 only when onnxruntime offers a GPU."""
    if available_providers is None:
        try:
            available_providers = runtime.import_ort().get_available_providers()
        except LoraStudioError:
            available_providers = []
    gpu = any(p in available_providers for p in runtime.AUTO_ORDER if p != runtime.CPU)
    return DEFAULT_GPU_MODEL if gpu else DEFAULT_MODEL


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a download cannot work right now, or None. Checked before huggingface_hub is asked, because
    offline it retries for tens of seconds (printing tracebacks) while the caller waits."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return f"{var} is set"
    from urllib.parse import urlsplit
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None)
    url = urlsplit(proxy if proxy and "://" in proxy else ("http://" + proxy if proxy else
                   os.environ.get("HF_ENDPOINT") or "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        port = 443
    result: dict = {}

    def probe():   # a thread: name resolution ignores socket timeouts
        import socket
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc.strerror or str(exc) or type(exc).__name__

    t = threading.Thread(target=probe, name="tagger-online-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return None
    return f"cannot reach {host}:{port} ({result.get('error', 'no answer')})"


def _hub_errors():
    import huggingface_hub
    mod = getattr(huggingface_hub, "errors", None) or huggingface_hub.utils
    get = lambda n: getattr(mod, n, None) or getattr(huggingface_hub.utils, n, None) or ()  # noqa: E731
    return (get("RepositoryNotFoundError"), get("RevisionNotFoundError"), get("EntryNotFoundError"),
            get("LocalEntryNotFoundError"))


def resolve_model(spec: str, models_dir, allow_download: bool = True, revision: str | None = None,
                  log=print, paths: bool = True) -> ModelFiles:
    """A folder (or its model.onnx) → used as is. A known name or `owner/repo` → `<models_dir>/<name>/`,
    then the HF cache without network, then a download into `<models_dir>/<name>/` (visible, not the
    system-drive cache) when allowed. `paths=False` (the UI): `spec` is only ever a name, never a folder
    looked up from the working directory."""
    spec = str(spec).strip()
    if not spec:
        raise ModelNotFound("no tagger model given: pass a folder with model.onnx + selected_tags.csv or a model name.")
    if paths:
        p = Path(spec).expanduser()
        if p.is_file() and p.suffix.lower() == ".onnx":
            fam = next((f for f in FAMILIES.values() if p.with_name(f.tags_file).is_file()), None)
            if fam is None:
                raise ModelNotFound(f"{p.parent} has no label file for {p.name}: put {TAGS_FILE} next to it "
                                    f"({_label_files_hint()}).")
            return ModelFiles(p.parent.name, p, p.with_name(fam.tags_file), "local folder", family=fam.name)
        if p.is_dir():
            pair = _pair(p)
            if pair is None:
                raise ModelNotFound(f"{p} holds no tagger model: put {MODEL_FILE} + {TAGS_FILE} (WD14), "
                                    f"{MODEL_FILE} + tags-selected.csv (Z3D-E621) or deepdanbooru.onnx + tags.txt "
                                    "(DeepDanbooru) there.")
            return ModelFiles(p.name, *pair[:2], "local folder", family=pair[2])
    elif "\\" in spec or spec.startswith(("/", "~", ".")) or ".." in spec.split("/"):
        raise ModelNotFound(f"'{spec}' is not a model name; pick one from the list (or give a folder inside "
                            f"{models_dir}).")
    local = Path(models_dir) / spec
    if "/" not in spec and "\\" not in spec and local.is_dir():   # a sub-folder of the models folder, by name
        pair = _pair(local, strict=spec not in KNOWN_MODELS)   # a known one may be a download in progress
        if pair:
            return ModelFiles(spec, *pair[:2], "local folder",
                              KNOWN_MODELS[spec].threshold_hint if spec in KNOWN_MODELS else None, pair[2])
    known = KNOWN_MODELS.get(spec) or next((k for k in KNOWN_MODELS.values() if k.repo == spec), None)
    if known is None and spec.count("/") != 1:
        raise ModelNotFound(f"'{spec}' is neither a folder nor a known model; known: {', '.join(KNOWN_MODELS)}.")
    repo = known.repo if known else spec
    name = repo.split("/")[-1]
    hint = known.threshold_hint if known else None
    fam = FAMILIES[known.family if known else "wd14"]
    model_file, tags_file = fam.model_file, fam.tags_file
    rev = revision or (known.revision if known else "main")
    target = Path(models_dir) / name
    pair = _pair(target, strict=False) if target.is_dir() else None   # half there: an interrupted download
    if pair:
        return ModelFiles(name, *pair[:2], "local folder", hint, pair[2])
    where = f"put {model_file} and {tags_file} from https://huggingface.co/{repo} into {target}"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelNotFound(f"Tagger model {name} is not on this computer and huggingface_hub is not installed: "
                            f"{where}.") from None
    try:  # the HF cache first, without touching the network (hf_hub_download otherwise hangs offline)
        files = [Path(hf_hub_download(repo, f, revision=rev, local_files_only=True)) for f in (model_file, tags_file)]
        return ModelFiles(name, files[0], files[1], "HF cache", hint, fam.name)
    except Exception:  # noqa: BLE001 — any miss means "not cached"
        pass
    if not allow_download:
        raise ModelNotFound(f"Tagger model {name} is not on this computer and downloads are off: {where}.")
    offline = offline_reason()
    if offline:
        raise ModelNotFound(f"Tagger model {name} is not on this computer and cannot be downloaded ({offline}): "
                            f"{where}.")
    repo_missing, rev_missing, entry_missing, not_local = _hub_errors()
    log(f"[tagger] downloading {repo}@{rev} into {target} ...")
    try:
        extra = {}
        import huggingface_hub
        if runtime.version_tuple(huggingface_hub.__version__) < (0, 23):
            extra["local_dir_use_symlinks"] = False   # older hubs symlink big files into the system-drive cache
        files = [Path(hf_hub_download(repo, f, revision=rev, local_dir=str(target), **extra))
                 for f in (tags_file, model_file)]
    except Exception as exc:  # noqa: BLE001
        # LocalEntryNotFoundError (offline, nothing cached) subclasses EntryNotFoundError: test it first.
        if not (not_local and isinstance(exc, not_local)):
            if rev_missing and isinstance(exc, rev_missing):
                raise ModelNotFound(f"{repo} has no revision '{rev}': pass another revision (e.g. main).") from None
            if repo_missing and isinstance(exc, repo_missing):
                raise ModelNotFound(f"Hugging Face repo {repo} does not exist (or is private): check the name.") from None
            if entry_missing and isinstance(exc, entry_missing):
                raise ModelNotFound(f"{repo}@{rev} has no {model_file}/{tags_file}: it is not an ONNX "
                                    f"{fam.label} tagger.") from None
        raise ModelNotFound(f"Tagger model {name} is not on this computer and could not be downloaded "
                            f"(offline? {type(exc).__name__}): {where}.") from None
    return ModelFiles(name, files[1], files[0], "downloaded", hint, fam.name)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Tagger:
    """One ONNX session plus its labels. Everything about the input is read from the model.

    CPU throughput: a transformer run on N intra-op threads leaves cores idle in its serial stretches and
    burns CPU spinning, so folder runs use `streams` concurrent single-threaded runs instead. The session
    for that is `throughput=True` (the CLI) or created on first use next to the low-latency one (the UI,
    where single images want every core).
    """

    def __init__(self, files: ModelFiles, provider: str = "auto", threads: int = 0, throughput: bool = False):
        ort = runtime.import_ort()
        runtime.check_runtime(files.onnx, ort.__version__)
        self.files, self.name = files, files.name
        self.family = FAMILIES[files.family]
        self.pixels = self.family.pixels
        self.tagset: TagSet = load_tags(files.tags, self.family.require_category)
        requested, strict = runtime.plan_providers(provider, ort.get_available_providers())
        self._requested, self.threads = requested, threads
        cpu_only = requested == [runtime.CPU]
        sess = self._new_session(1 if (throughput and cpu_only and threads == 0) else threads)
        self.warning = runtime.verify_providers(requested, sess.get_providers(), strict)
        self.provider = sess.get_providers()[0]
        self._read_io(sess)
        self._session = sess
        self._single_threaded = throughput and cpu_only and threads == 0
        self._stream_session = sess if self._single_threaded else None
        self._stream_lock = threading.Lock()
        if self.is_gpu:
            self.streams = 1
        else:
            self.streams = max(1, min(4, cpu_count() // threads)) if threads > 0 else min(4, cpu_count())

    def _new_session(self, threads: int):
        ort = runtime.import_ort()
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        if "DmlExecutionProvider" in self._requested:   # DirectML supports neither memory patterns nor parallel mode
            opts.enable_mem_pattern = False
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(str(self.files.onnx), opts, providers=self._requested)
        except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own exception types
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "opset" in text.lower():
                raise runtime.RuntimeTooOld(
                    f"{self.files.onnx}: onnxruntime {ort.__version__} cannot load this model ({text}); "
                    f"WD14 v3 models need onnxruntime ≥ 1.17: upgrade it.") from None
            raise ModelFormatError(f"{self.files.onnx} cannot be loaded by onnxruntime ({text}); "
                                   "re-download the model.") from None

    def _read_io(self, sess) -> None:
        ins, outs = sess.get_inputs(), sess.get_outputs()
        if len(ins) != 1 or len(outs) < 1:
            raise ModelFormatError(f"{self.files.onnx} has {len(ins)} inputs: a {self.family.label} tagger has one "
                                   "image input.")
        inp, out = ins[0], outs[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise ModelFormatError(f"{self.files.onnx} takes input {shape}; a {self.family.label} tagger takes "
                                   "[batch, size, size, 3] (NHWC).")
        if "float" not in str(inp.type):
            raise ModelFormatError(f"{self.files.onnx} takes {inp.type}; a {self.family.label} tagger takes "
                                   "float32 pixels.")
        self.input_name, self.output_name = inp.name, out.name
        self.size = int(shape[1])
        # An int batch dim is fixed (v2 exports are tied to 1 inside the graph); a string/None is dynamic.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        width = out.shape[-1] if out.shape else None
        if isinstance(width, int) and width != len(self.tagset):
            raise ModelFormatError(f"{self.files.onnx} outputs {width} scores but {self.files.tags} lists "
                                   f"{len(self.tagset)} tags: the two files are from different models.")

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def provider_label(self) -> str:
        return runtime.short_name(self.provider)

    @property
    def is_gpu(self) -> bool:
        return self.provider != runtime.CPU

    def batch_size(self, requested: int = 0) -> int:
        """0 = auto: 8 on a GPU; 1 per stream on CPU (a bigger batch only adds memory traffic there).
        A fixed batch dimension wins over any request."""
        requested = int(requested or 0)
        if requested <= 0:
            requested = 8 if self.is_gpu else 1
        return self.fixed_batch if self.fixed_batch else requested

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """[n, size, size, 3] float32 BGR → [n, tags] probabilities (the graph already applies sigmoid)."""
        return self._run(self._session, batch)

    def infer_stream(self, batch: np.ndarray) -> np.ndarray:
        """Like infer, for `streams` concurrent callers: on CPU a single-threaded session per call."""
        if self.is_gpu or self.threads > 0:
            return self._run(self._session, batch)
        with self._stream_lock:
            if self._stream_session is None and self._session is not None:
                self._stream_session = self._new_session(1)
            sess = self._stream_session
        return self._run(sess, batch)

    def _run(self, sess, batch: np.ndarray) -> np.ndarray:
        if sess is None or self._session is None:
            raise LoraStudioError("the tagger model was unloaded; load it again.")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        step = self.fixed_batch or n
        outs = []
        for i in range(0, n, step):
            chunk = batch[i:i + step]
            pad = step - chunk.shape[0]
            if pad:  # a fixed batch > 1 with a short last chunk: pad, then drop the padding's scores
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(sess.run([self.output_name], {self.input_name: chunk})[0][:step - pad])
        return np.concatenate(outs).reshape(n, -1)

    def unload(self) -> None:
        self._session = self._stream_session = None

    def describe(self) -> str:
        batch = f"fixed batch {self.fixed_batch}" if self.fixed_batch else "dynamic batch"
        kind = "" if self.family.name == "wd14" else f"{self.family.label} "
        return (f"{kind}{self.name} ({self.files.source}), {len(self.tagset)} tags, input {self.size}x{self.size} "
                f"'{self.input_name}', {batch}, running on {self.provider_label}")


# One session per (model, provider), reused across calls; the UI and CLI share it. A lock per key: loading
# one model (seconds for a large one) never holds up callers of another, already loaded one.
_cache: dict[tuple, Tagger] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}


def get_tagger(spec: str, models_dir, provider: str = "auto", allow_download: bool = True,
               revision: str | None = None, threads: int = 0, throughput: bool = False, log=print,
               paths: bool = True) -> Tagger:
    """`throughput=True` (folder-only callers such as the CLI): on CPU, one single-threaded session.
    `paths=False`: `spec` is a model name only (see resolve_model)."""
    files = resolve_model(spec, models_dir, allow_download, revision, log, paths=paths)
    key = (str(Path(files.onnx).resolve()), provider, threads, throughput)
    with _cache_lock:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        t = _cache.get(key)
        if t is None or not t.loaded:
            t = Tagger(files, provider, threads, throughput)
            with _cache_lock:
                _cache.pop(key, None)      # re-inserted: the dict's order stays the loading order
                _cache[key] = t
            log(f"[tagger] loaded {t.describe()}")
            if t.warning:
                log(f"[tagger] {t.warning}")
        return t


def loaded_taggers() -> list[Tagger]:
    """Taggers holding a session now, in the order they were loaded (a page opened later shows them)."""
    with _cache_lock:
        return [t for t in _cache.values() if t.loaded]


def unload_all() -> int:
    """Drop every session (frees the GPU memory onnxruntime holds); returns how many were loaded."""
    with _cache_lock:
        n = sum(1 for t in _cache.values() if t.loaded)
        for t in _cache.values():
            t.unload()
        _cache.clear()
    import gc
    gc.collect()
    return n
