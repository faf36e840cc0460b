"""Static guard: the shipped code must still run inside AUTOMATIC1111 (Python 3.10, torch 2.1.2,
numpy 1.26, safetensors 0.4.2, Pillow 9.5) while we develop on newer versions.

Pure `ast` scan of lib_lora/, lora_studio_webui/, scripts/ and install.py (no imports of the code under
test), so it runs in well under a second. Each failure names file:line and what to use instead.
The denylists hold names that are absent from the old versions (checked against real installs of
torch 2.1.2 / numpy 1.26.2 / safetensors 0.4.2 / Pillow 9.5.0); a name that is guarded
(`hasattr(torch, "x")` / `getattr(torch, "x", None)`) is a string there and is not flagged.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCAN = ["lib_lora", "lora_studio_webui", "scripts", "install.py"]

# The lists below come from diffing dir() of real installs: Python 3.10.13 vs 3.13, torch 2.1.2 vs 2.13,
# numpy 1.26.2 vs 2.4, Pillow 9.5.0 vs 13, safetensors 0.4.2 vs 0.8 (public names only, hand-trimmed
# to the ones this project could plausibly reach for).

# Standard library: module -> names added after Python 3.10 (imported, or used as module.attr).
STDLIB_NEW = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "get_overloads",
               "clear_overloads", "override", "TypeAliasType", "get_protocol_members", "is_protocol",
               "ReadOnly", "TypeIs", "NoDefault"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "EnumType", "FlagBoundary", "verify", "member", "nonmember",
             "global_enum", "show_flag_values", "property", "CONFORM", "CONTINUOUS", "EJECT", "KEEP",
             "NAMED_FLAGS", "STRICT", "UNIQUE", "EnumDict"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier", "BrokenBarrierError", "Timeout",
                "QueueShutDown", "eager_task_factory", "create_eager_task_factory", "EventLoop"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "itertools": {"batched"},
    "operator": {"call"},
    "math": {"exp2", "cbrt", "sumprod", "fma"},
    "statistics": {"kde", "kde_random"},
    "re": {"NOFLAG", "PatternError"},
    "logging": {"getLevelNamesMapping", "getHandlerByName", "getHandlerNames"},
    "inspect": {"markcoroutinefunction", "getmembers_static", "getasyncgenstate", "getasyncgenlocals",
                "BufferFlags"},
    "os": {"process_cpu_count"},
    "os.path": {"splitroot", "isjunction", "isdevdrive"},
    "sys": {"exception", "monitoring", "activate_stack_trampoline", "deactivate_stack_trampoline",
            "is_stack_trampoline_active"},
    "warnings": {"deprecated"},
    "copy": {"replace"},
    "glob": {"translate"},
    "queue": {"ShutDown"},
    "pathlib": {"UnsupportedOperation"},
    "types": {"get_original_bases"},
    "mimetypes": {"guess_file_type"},
    "random": {"binomialvariate"},
    "base64": {"z85encode", "z85decode"},
    "concurrent.futures": {"InvalidStateError"},
    "threading": {"setprofile_all_threads", "settrace_all_threads"},
    "sqlite3": {"Blob"},
}
STDLIB_NEW_MODULES = {"tomllib", "wsgiref.types"}
BUILTINS_NEW = {"ExceptionGroup", "BaseExceptionGroup", "PythonFinalizationError"}
# Method names (any receiver) added after 3.10, with the 3.10 way to say it.
METHODS_NEW = {
    "add_note": "BaseException.add_note() is Python 3.11+; put the detail in the message",
    "full_match": "PurePath.full_match() is Python 3.13+; use fnmatch or PurePath.match",
    "is_junction": "Path.is_junction() is Python 3.12+",
    "with_segments": "PurePath.with_segments() is Python 3.12+",
    "from_uri": "Path.from_uri() is Python 3.13+",
}
# `x.walk()` is Path.walk (3.12+) unless x is an imported module (os.walk, ast.walk).
PATH_WALK = "Path.walk() is Python 3.12+; use os.walk(path)"

# torch: names absent from torch 2.1.2 (module -> attribute, possibly dotted).
TORCH_NEW = {
    "torch": {"compiler", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
              "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "uint16", "uint32", "uint64",
              "int1", "int2", "int3", "int4", "int5", "int6", "int7", "get_default_device", "get_device_module",
              "xpu", "mtia", "accelerator", "jagged", "newaxis", "rms_norm", "cond", "while_loop",
              "unravel_index", "get_autocast_dtype", "set_autocast_dtype", "GradScaler", "OutOfMemoryError",
              "AcceleratorError", "Event", "hash_tensor", "slice_inverse", "sym_sum", "sym_ite", "sym_sqrt",
              "export.Dim", "export.dims", "export.draft_export", "export.ShapesCollection",
              "export.unflatten", "export.register_dataclass", "export.default_decompositions",
              "nn.utils.fuse_linear_bn_eval", "nn.utils.get_total_norm", "nn.utils.clip_grads_with_norm_",
              "utils.swap_tensors", "utils.checkpoint.CheckpointPolicy",
              "utils.checkpoint.create_selective_checkpoint_contexts", "backends.mha",
              "backends.cusparselt", "backends.kleidiai", "mps.device_count", "mps.compile_shader",
              "mps.recommended_max_memory", "cuda.MemPool", "cuda.use_mem_pool", "cuda.device_memory_used",
              "cuda.host_memory_stats", "cuda.is_tf32_supported", "cuda.get_per_process_memory_fraction",
              "sparse.spsolve", "optim.Adafactor", "optim.Muon"},
    "torch.nn": {"attention", "RMSNorm", "Buffer", "LPPool3d"},
    "torch.nn.functional": {"rms_norm", "grouped_mm", "scaled_grouped_mm", "scaled_mm", "lp_pool3d",
                            "linear_cross_entropy"},
    "torch.library": {"custom_op", "register_fake", "register_autograd", "register_kernel", "register_vmap",
                      "register_torch_dispatch", "register_autocast", "opcheck", "infer_schema", "triton_op",
                      "wrap_triton", "get_ctx", "get_kernel", "CustomOpDef", "impl_abstract"},
    "torch.serialization": {"add_safe_globals", "safe_globals", "get_safe_globals", "clear_safe_globals",
                            "get_unsafe_globals_in_checkpoint", "skip_data", "get_default_mmap_options",
                            "set_default_mmap_options", "get_crc32_options", "set_crc32_options"},
    "torch.amp": {"GradScaler", "custom_fwd", "custom_bwd", "is_autocast_available"},
    "torch.cpu": {"current_device", "set_device", "is_initialized", "get_capabilities", "Event"},
}
# Tensor / nn.Module / PIL Image methods added later, with names that mean nothing else here.
LIB_METHODS_NEW = {
    "set_submodule": "nn.Module.set_submodule() is torch 2.2+; setattr() on the parent module",
    "module_load": "Tensor.module_load() is torch 2.3+",
    "const_data_ptr": "Tensor.const_data_ptr() is torch 2.2+; use data_ptr()",
    "register_state_dict_post_hook": "nn.Module.register_state_dict_post_hook() is newer than torch 2.1",
    "register_load_state_dict_pre_hook": "nn.Module.register_load_state_dict_pre_hook() is newer than torch 2.1; "
                                         "use _register_load_state_dict_pre_hook",
    "has_transparency_data": "Image.has_transparency_data is Pillow 10.1+; test mode/info['transparency']",
    "get_flattened_data": "Image.get_flattened_data() is newer than Pillow 9.5; use getdata()",
}
NUMPY_NEW = {
    "numpy": {"concat", "permute_dims", "matrix_transpose", "vecdot", "matvec", "vecmat", "unique_values",
              "unique_counts", "unique_inverse", "unique_all", "astype", "isdtype", "pow", "acos", "acosh",
              "asin", "asinh", "atan", "atanh", "atan2", "bitwise_left_shift", "bitwise_invert",
              "bitwise_right_shift", "bitwise_count", "cumulative_sum", "cumulative_prod", "trapezoid",
              "unstack", "strings", "long", "ulong", "bool", "lib.array_utils", "lib.introspect",
              "linalg.matrix_norm", "linalg.vector_norm", "linalg.vecdot", "linalg.matrix_transpose",
              "linalg.svdvals", "linalg.diagonal", "linalg.trace", "linalg.outer", "linalg.cross",
              "linalg.tensordot", "linalg.matmul", "dtypes.StringDType"},
}
PIL_NEW = {
    "PIL.Image": {"fromarrow", "Image.has_transparency_data", "Image.get_flattened_data"},
    "PIL.ImageOps": {"cover"},
    "PIL.ImageFont": {"load_default_imagefont"},
}
SAFETENSORS_NEW = {
    "safetensors": {"TensorSpec"},
    "safetensors.torch": {"TensorSpec"},
}
LIB_NEW = {**TORCH_NEW, **NUMPY_NEW, **PIL_NEW, **SAFETENSORS_NEW}

# Keyword arguments added later: (full name of the callee or "*.method", keyword) -> message.
KWARGS_NEW = {
    ("*", "delete_on_close"): "NamedTemporaryFile(delete_on_close=) is Python 3.12+",
    ("*", "onexc"): "shutil.rmtree(onexc=) is Python 3.12+; use onerror=",
    ("*", "walk_up"): "PurePath.relative_to(walk_up=) is Python 3.12+",
    ("*.glob", "case_sensitive"): "Path.glob(case_sensitive=) is Python 3.12+",
    ("*.rglob", "case_sensitive"): "Path.rglob(case_sensitive=) is Python 3.12+",
    ("*.match", "case_sensitive"): "PurePath.match(case_sensitive=) is Python 3.12+",
    ("numpy.asarray", "copy"): "np.asarray(copy=) is numpy 2; use np.array(x, copy=...) on numpy 1.26",
    ("numpy.reshape", "copy"): "np.reshape(copy=) is numpy 2.1+",
    ("numpy.unique", "sorted"): "np.unique(sorted=) is numpy 2.3+",
    ("PIL.ImageFont.load_default", "size"): "ImageFont.load_default(size=) is Pillow 10.1+",
}
# Regular expressions: atomic groups and possessive quantifiers are Python 3.11+ (re.error on 3.10).
RE_FUNCS = {"compile", "match", "search", "fullmatch", "sub", "subn", "split", "findall", "finditer"}
RE_NEW_SYNTAX = re.compile(r"\(\?>|(?<!\\)(?:[*+?]|\})\+")


def _files():
    for entry in SCAN:
        p = ROOT / entry
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from sorted(p.rglob("*.py"))


def _chain(node: ast.AST):
    """`a.b.c` -> ("a", ["b", "c"]); None if the base is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, parts[::-1]
    return None


WATCHED_TOP = {m.split(".")[0] for m in list(LIB_NEW) + list(STDLIB_NEW)}


def _aliases(nodes) -> dict[str, str]:
    """Local name -> full dotted name, for imports of the modules we check."""
    out: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in WATCHED_TOP:
                    if a.asname:
                        out[a.asname] = a.name
                    else:
                        out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _is_new_lib_name(full: str):
    """Full dotted name -> reason if it is on a denylist."""
    for mod, names in LIB_NEW.items():
        if full.startswith(mod + "."):
            rest = full[len(mod) + 1:]
            for n in names:
                if rest == n or rest.startswith(n + "."):
                    return f"{mod}.{n} does not exist in the versions A1111 ships (torch 2.1.2, numpy 1.26, " \
                           f"Pillow 9.5, safetensors 0.4.2); use an older equivalent or guard it with getattr"
    return None


def _check_call(node: ast.Call, aliases: dict[str, str], add) -> None:
    chain = _chain(node.func)
    full = ".".join([aliases.get(chain[0], chain[0])] + chain[1]) if chain else None
    method = node.func.attr if isinstance(node.func, ast.Attribute) else None
    for kw in node.keywords:
        for (callee, name), msg in KWARGS_NEW.items():
            if kw.arg == name and (callee == "*" or callee == full
                                   or (callee.startswith("*.") and method == callee[2:])):
                add(kw.value, msg)
    if full and full.startswith("re.") and full[3:] in RE_FUNCS and node.args:
        pat = node.args[0]
        if isinstance(pat, ast.Constant) and isinstance(pat.value, str) and RE_NEW_SYNTAX.search(pat.value):
            add(pat, "atomic groups (?>...) and possessive quantifiers (*+ ++ ?+) are Python 3.11+ regex syntax")


def scan_source(src: str, name: str = "<src>") -> list[str]:
    """All compatibility problems in one file's source, as 'name:line: message'."""
    try:
        tree = ast.parse(src, filename=name)
    except SyntaxError as exc:
        return [f"{name}:{exc.lineno}: does not parse: {exc.msg}"]
    problems = []
    try:  # the parser's own 3.10 grammar check (best effort; the walk below gives exact lines)
        ast.parse(src, filename=name, feature_version=(3, 10))
    except SyntaxError as exc:
        if not any(isinstance(n, ast.TryStar) for n in ast.walk(tree) if hasattr(ast, "TryStar")):
            problems.append(f"{name}:{exc.lineno}: syntax newer than Python 3.10: {exc.msg}")

    def add(node, msg):
        problems.append(f"{name}:{getattr(node, 'lineno', 0)}: {msg}")

    nodes = list(ast.walk(tree))
    aliases = _aliases(nodes)
    imported = {a.asname or a.name.split(".")[0] for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    for node in nodes:
        kind = type(node).__name__
        if kind == "TryStar":
            add(node.handlers[0], "except* is Python 3.11+; catch the exception normally")
        elif kind in ("TypeAlias", "TypeVar", "ParamSpec", "TypeVarTuple"):
            add(node, f"{kind} syntax (PEP 695) is Python 3.12+")
        if getattr(node, "type_params", None):
            add(node, "PEP 695 generic syntax (class C[T] / def f[T]) is Python 3.12+")
        if isinstance(node, ast.Subscript) and any(isinstance(e, ast.Starred) for e in
                                                   (node.slice.elts if isinstance(node.slice, ast.Tuple)
                                                    else [node.slice])):
            add(node, "star in a subscript (tuple[*Ts]) is Python 3.11+")
        if isinstance(node, ast.arg) and isinstance(node.annotation, ast.Starred):
            add(node, "*args: *Ts is Python 3.11+")
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in STDLIB_NEW_MODULES:
                    add(node, f"module {a.name} is Python 3.11+ (tomllib: use the `tomli` fallback)")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in STDLIB_NEW_MODULES:
                add(node, f"module {node.module} is Python 3.11+")
            for a in node.names:
                if a.name in STDLIB_NEW.get(node.module, ()):
                    add(node, f"{node.module}.{a.name} is Python 3.11+")
                reason = _is_new_lib_name(f"{node.module}.{a.name}")
                if reason:
                    add(node, reason)
        elif isinstance(node, ast.Call):
            _check_call(node, aliases, add)
        elif isinstance(node, ast.Name) and node.id in BUILTINS_NEW and node.id not in aliases:
            add(node, f"{node.id} is Python 3.11+")
        elif isinstance(node, ast.Attribute):
            if node.attr in METHODS_NEW:
                add(node, METHODS_NEW[node.attr])
            if node.attr in LIB_METHODS_NEW:
                add(node, LIB_METHODS_NEW[node.attr])
            if node.attr == "walk" and not (isinstance(node.value, ast.Name) and node.value.id in imported):
                add(node, PATH_WALK)
            chain = _chain(node)
            if chain and chain[0] in aliases:
                full = ".".join([aliases[chain[0]]] + chain[1])
                mod, _, attr = full.rpartition(".")
                if attr in STDLIB_NEW.get(mod, ()):
                    add(node, f"{full} is Python 3.11+")
                reason = _is_new_lib_name(full)
                if reason:
                    add(node, reason)
    # Outer chains contain inner ones (torch.nn.attention.x holds torch.nn.attention): one report per line.
    return sorted(set(problems), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def test_shipped_code_runs_on_a1111_versions():
    problems = []
    files = list(_files())
    assert len(files) > 20, f"scan found only {len(files)} files under {ROOT}"
    for p in files:
        problems += scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))
    assert not problems, "newer-than-A1111 constructs:\n" + "\n".join(problems)


def test_scanner_catches_each_kind():
    """The scanner itself: every category fires with the right line, and guarded uses stay quiet."""
    cases = {
        "try:\n    pass\nexcept* ValueError:\n    pass\n": 3,
        "import tomllib\n": 1,
        "from typing import Self\n": 1,
        "import datetime\nx = datetime.UTC\n": 2,
        "from datetime import UTC\n": 1,
        "x = 1\nraise ExceptionGroup('m', [ValueError()])\n": 2,
        "def f(e):\n    e.add_note('x')\n": 2,
        "import torch\n\n\ntorch.compiler.disable()\n": 4,
        "import torch.nn.functional as F\ny = F.rms_norm(x, (4,))\n": 2,
        "from torch.nn.attention import sdpa_kernel\n": 1,
        "import torch\nd = torch.float8_e4m3fnuz\n": 2,
        "from torch.library import custom_op\n": 1,
        "import numpy as np\nx = np.concat([a, b])\n": 2,
        "import numpy as np\nn = np.linalg.vector_norm(a)\n": 2,
        "def f(m, c):\n    m.set_submodule('a.b', c)\n": 2,
        "x: tuple[*Ts]\n": 1,
        "import itertools\nfor b in itertools.batched(x, 2):\n    pass\n": 2,
        "from pathlib import Path\nfor d, _, fs in Path('.').walk():\n    pass\n": 2,
        "import os\nh, t = os.path.splitroot(p)\n": 2,
        "import torch\nx = torch.uint16\n": 2,
        "from torch import nn\nn2 = nn.RMSNorm(4)\n": 2,
        "import torch\n\ndef f(t):\n    return t.const_data_ptr()\n": 4,
        "from safetensors import TensorSpec\n": 1,
        "from PIL import ImageOps\nim = ImageOps.cover(im, (8, 8))\n": 2,
        "import numpy\nb = numpy.bool\n": 2,
        "import re\nR = re.compile(r'(?>ab|a)c')\n": 2,
        "import re as _re\nm = _re.match(r'\\s*+x', s)\n": 2,
        "import numpy as np\na = np.asarray(x,\n               copy=False)\n": 3,
        "import shutil\nshutil.rmtree(p, onexc=f)\n": 2,
        "from pathlib import Path\nfs = Path('.').glob('*.TXT', case_sensitive=False)\n": 2,
        "from PIL import ImageFont\nf = ImageFont.load_default(size=12)\n": 2,
    }
    for src, line in cases.items():
        found = scan_source(src, "t.py")
        assert found, f"not flagged: {src!r}"
        assert found[0].startswith(f"t.py:{line}:"), (src, found)
    fine = [
        "import torch\ndt = getattr(torch, 'float8_e4m3fnuz', None)\nok = hasattr(torch, 'compiler')\n",
        "import torch\nx = torch.float8_e4m3fn\ny = torch.nn.functional.scaled_dot_product_attention\n",
        "import numpy as np\nb = np.bool_\nz = np.linalg.norm(a)\n",
        "from PIL import Image\nr = Image.Resampling.LANCZOS\n",
        "from __future__ import annotations\ndef f(x: int | None) -> list[int]:\n    match x:\n"
        "        case None:\n            return []\n    return [x]\n",
        "import torch\nsd = torch.load(p, map_location='cpu', weights_only=True)\n",
        "from typing import Optional, TypeVar\nclass ExceptionGroup(Exception):\n    pass\n",
        "import os\nimport ast\nfor r, d, f in os.walk('.'):\n    pass\nn = list(ast.walk(t))\n",
        "import torch\nx = torch.uint8\ny = torch.nn.Module.get_submodule\nz = torch.export\n",
        "import re\nR = re.compile(r'[+*]+ (a|b)+ x{2} C\\+\\+')\nimport numpy as np\nb = np.array(a, copy=False)\n",
        "import fnmatch\nok = fnmatch.fnmatch(n, '*.txt')\nm = p.match('*.txt')\n",
    ]
    for src in fine:
        assert scan_source(src, "t.py") == [], src
