"""The bridge to kohya sd-scripts for users who keep it.

`export(cfg_or_path, out_dir)` writes the same run as sd-scripts files: a `--config_file` TOML (argument names
and value types exactly as `train_network.py` / `sdxl_train_network.py` put them in their namespace: sd-scripts
copies TOML values in without argparse's conversion, so `resolution` stays the text "W,H", `network_args` a
list of "k=v" texts), a `--dataset_config` TOML with every dataset and subset written out (folder names, TOML
precedence and CLI fallbacks already resolved, so both trainers see the same subsets), and the argument list
`accelerate launch … train_network.py --config_file …`.

`launch(sd_scripts_dir, export)` runs that command with the checkout's own venv (argument list, cwd = the
checkout), streams its log lines and turns its tqdm "steps" bar into progress callbacks; `cancel` ends the whole
process group. The venv's accelerate is run as `python -m accelerate.commands.launch` (what its `accelerate`
script does), so the same argument list works on Windows and with an explicit interpreter.

Standard library only: the CLI imports this without torch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from lib_lora.errors import LoraStudioError
from lib_lora.options import _toml_value, fields as option_fields
from lib_lora.train.config import (DatasetSpec, SubsetSpec, TrainConfig, dataset_specs, load_config,
                                   optimizer_name)

SCRIPTS = {"sd1": "train_network.py", "sd2": "train_network.py", "sdxl": "sdxl_train_network.py"}
DEFAULT_ACCELERATE_ARGS = ("--num_cpu_threads_per_process", "1")
CONFIG_NAME, DATASET_NAME = "sd_scripts_config.toml", "sd_scripts_dataset.toml"

# Our keys that go to the dataset TOML (written per dataset/subset) instead of the config file.
_DATASET_ONLY = {"train_data_dir", "reg_data_dir", "dataset_config", "dataset_repeats", "resolution",
                 "train_batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                 "bucket_no_upscale"} | {f for f in SubsetSpec.__dataclass_fields__}
_PATHS = ("pretrained_model_name_or_path", "output_dir", "logging_dir", "resume", "network_weights")
_ATTENTION = ("xformers", "sdpa", "mem_eff_attn")
# sd-scripts 0.8.x took these at the top level; today's reads them from network_args only
_AS_NETWORK_ARGS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


@dataclass
class Export:
    config_path: str
    dataset_path: str | None
    argv: list[str]            # ["accelerate", "launch", …, script, "--config_file", config_path]
    script: str = "train_network.py"
    values: dict = field(default_factory=dict)     # the config file's keys and values

    def command(self) -> str:
        """The argument list as one line a user can paste (quoted for the local shell)."""
        if os.name == "nt":
            return subprocess.list2cmdline(self.argv)
        import shlex
        return shlex.join(self.argv)


def checkpoint_arch(path) -> str:
    """sd1 / sd2 / sdxl from the checkpoint's key names (header only)."""
    from lib_lora.fileio import read_safetensors_header

    if not os.path.isfile(path):
        raise LoraStudioError(f"pretrained_model_name_or_path '{path}' is not a file; give the base checkpoint "
                              "(.safetensors) so the export can pick train_network.py or sdxl_train_network.py.")
    _, header = read_safetensors_header(path)
    keys = header.keys()
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    return "sd1"


def _number(v, kind):
    if kind is float:
        return float(v)
    return v


def config_values(cfg: TrainConfig, arch: str, dataset_path: str | None) -> dict:
    """TrainConfig → sd-scripts' namespace values (names, Python types and value forms it expects)."""
    out = {}
    for o in option_fields(TrainConfig):
        name, value = o.name, getattr(cfg, o.name)
        if name in _DATASET_ONLY or name in _AS_NETWORK_ARGS or value is None:
            continue
        if o.kind is bool and value is False:
            continue                          # store_true: absent is false
        if isinstance(value, list) and not value:
            continue
        if name in _PATHS:
            value = os.path.abspath(value)
        elif name == "max_token_length" and value == 75:
            continue                          # sd-scripts: unset means 75 (its choices are 150 / 225)
        elif name == "optimizer_type":
            value = optimizer_name(value)
        elif name == "lr_warmup_steps":       # int steps, or a float fraction (< 1) of all steps
            value = int(value) if float(value).is_integer() else float(value)
        elif name == "clip_skip" and arch == "sdxl":
            continue                          # sdxl_train_network ignores it with a warning; we train SD1 only
        elif isinstance(value, list):
            value = [str(x) for x in value]
        else:
            value = _number(value, o.kind)
        out[name] = value
    given = {str(a).partition("=")[0].strip() for a in cfg.network_args or []}
    moved = [f"{k}={getattr(cfg, k):g}" for k in _AS_NETWORK_ARGS if getattr(cfg, k) is not None and k not in given]
    if moved:
        out["network_args"] = [*out.get("network_args", []), *moved]
    out["output_name"] = cfg.name
    out["v2"] = arch == "sd2" or bool(cfg.v2)
    if not out["v2"]:
        del out["v2"]
    if not any(out.get(k) for k in _ATTENTION):
        out["sdpa"] = True                    # the built-in trainer's attention (torch SDPA): same math, less memory
    if dataset_path:
        out["dataset_config"] = dataset_path
    return out


_SUBSET_DEFAULTS = SubsetSpec(image_dir="")


def dataset_document(specs: list[DatasetSpec]) -> dict:
    """Every dataset and subset written out (values equal to sd-scripts' defaults included, so a different
    sd-scripts version's defaults cannot change the run)."""
    datasets = []
    for spec in specs:
        ds = {"resolution": [int(spec.resolution[0]), int(spec.resolution[1])], "batch_size": int(spec.batch_size),
              "enable_bucket": bool(spec.enable_bucket), "min_bucket_reso": int(spec.min_bucket_reso),
              "max_bucket_reso": int(spec.max_bucket_reso), "bucket_reso_steps": int(spec.bucket_reso_steps),
              "bucket_no_upscale": bool(spec.bucket_no_upscale), "subsets": []}
        for s in spec.subsets:
            sub = {"image_dir": os.path.abspath(s.image_dir), "num_repeats": int(s.num_repeats)}
            for name in SubsetSpec.__dataclass_fields__:
                if name in ("image_dir", "num_repeats"):
                    continue
                v = getattr(s, name)
                if v is None or (name == "is_reg" and not v):
                    continue
                if name in ("caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step"):
                    v = float(v)
                sub[name] = v
            ds["subsets"].append(sub)
        datasets.append(ds)
    return {"datasets": datasets}


def _toml_table(values: dict) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in values.items()]


def config_toml(values: dict) -> str:
    head = ["# kohya sd-scripts --config_file, exported by LoRA Studio (python -m lib_lora train --config … "
            "--export-sd-scripts DIR)"]
    return "\n".join(head + _toml_table(values)) + "\n"


def dataset_toml(doc: dict) -> str:
    lines = ["# kohya sd-scripts --dataset_config, exported by LoRA Studio"]
    for ds in doc["datasets"]:
        lines += ["", "[[datasets]]"] + _toml_table({k: v for k, v in ds.items() if k != "subsets"})
        for sub in ds["subsets"]:
            lines += ["", "  [[datasets.subsets]]"] + ["  " + x for x in _toml_table(sub)]
    return "\n".join(lines) + "\n"


def export(cfg_or_path, out_dir, *, accelerate_args=None, arch: str | None = None,
           overwrite: bool = False) -> Export:
    """Write the sd-scripts config + dataset TOML for this run into `out_dir`; return them and the command.
    `arch` (sd1/sd2/sdxl) is read from the checkpoint when not given."""
    from lib_lora.fileio import atomic_write_text, check_target

    cfg = cfg_or_path if isinstance(cfg_or_path, TrainConfig) else load_config(cfg_or_path)
    problems = cfg.check()
    if problems:
        raise LoraStudioError("the config cannot be exported: " + " ".join(problems))
    arch = arch or checkpoint_arch(cfg.pretrained_model_name_or_path)
    if arch not in SCRIPTS:
        raise LoraStudioError(f"arch '{arch}' is not one of {', '.join(SCRIPTS)}.")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LoraStudioError(f"'{out_dir}' is a file; give a folder for the sd-scripts files.")
    config_path = os.path.join(out_dir, CONFIG_NAME)
    dataset_path = os.path.join(out_dir, DATASET_NAME)
    for p in (config_path, dataset_path):
        if os.path.exists(p) and not overwrite:
            raise LoraStudioError(f"'{p}' exists; choose another folder or move the file away.")
    doc = dataset_document(dataset_specs(cfg))
    values = config_values(cfg, arch, dataset_path)
    os.makedirs(out_dir, exist_ok=True)
    for p in (config_path, dataset_path):
        check_target(p, overwrite)
    atomic_write_text(dataset_path, dataset_toml(doc), overwrite=overwrite)
    atomic_write_text(config_path, config_toml(values), overwrite=overwrite)
    acc = list(DEFAULT_ACCELERATE_ARGS if accelerate_args is None else accelerate_args)
    argv = ["accelerate", "launch", *acc, SCRIPTS[arch], "--config_file", config_path]
    return Export(config_path, dataset_path, argv, SCRIPTS[arch], values)


# ---- launch ------------------------------------------------------------------------------------------------

@dataclass
class SdProgress:
    """One update of sd-scripts' "steps" bar (same field names as the built-in trainer's Progress)."""
    step: int
    total: int
    loss: float | None
    eta: float | None          # seconds, from tqdm's remaining time
    epoch: int = 0
    epochs: int = 0


_BAR = re.compile(r"^steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]<]*)<([^,\]]*)(?:,([^\]]*))?\]")
_LOSS = re.compile(r"avr_loss=([-+0-9.eE]+|nan|inf)")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)\s*$")


def _seconds(text: str) -> float | None:
    parts = text.strip().split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return None                       # "?" before the rate is known
    total = 0.0
    for n in nums:
        total = total * 60 + n
    return total


def parse_progress(line: str) -> tuple[int, int, float | None, float | None] | None:
    """A tqdm "steps" line → (step, total, avr_loss, eta seconds), else None."""
    m = _BAR.match(line.strip())
    return None if m is None else _bar_values(m)


def _bar_values(m) -> tuple[int, int, float | None, float | None]:
    loss = None
    if m.group(5):
        lm = _LOSS.search(m.group(5))
        if lm:
            loss = float(lm.group(1))
    return int(m.group(1)), int(m.group(2)), loss, _seconds(m.group(4))


def find_python(sd_scripts_dir, python=None) -> str:
    """The interpreter of the checkout's venv (venv/ or .venv/; Scripts\\python.exe on Windows), or `python`."""
    if python:
        if not os.path.isfile(python):
            raise LoraStudioError(f"python '{python}' is not a file; give the sd-scripts venv's python "
                                  "executable.")
        return python
    tails = (("Scripts", "python.exe"),) if os.name == "nt" else (("bin", "python"), ("bin", "python3"))
    for venv in ("venv", ".venv"):
        for tail in tails:
            p = os.path.join(sd_scripts_dir, venv, *tail)
            if os.path.isfile(p):
                return p
    raise LoraStudioError(f"'{sd_scripts_dir}' has no venv (venv/{'/'.join(tails[0])}); create it as sd-scripts' "
                          "README says, or give its python with --sd-scripts-python.")


def launch_argv(sd_scripts_dir, exp: Export, python=None) -> list[str]:
    """The exported command with the venv's interpreter in place of `accelerate` (checks folder and script)."""
    sd_scripts_dir = os.path.abspath(sd_scripts_dir)
    if not os.path.isdir(sd_scripts_dir):
        raise LoraStudioError(f"sd-scripts folder '{sd_scripts_dir}' does not exist; give the folder of a "
                              "kohya sd-scripts checkout.")
    if not os.path.isfile(os.path.join(sd_scripts_dir, exp.script)):
        raise LoraStudioError(f"'{sd_scripts_dir}' has no {exp.script}; give the folder of a kohya sd-scripts "
                              "checkout.")
    py = find_python(sd_scripts_dir, python)
    if exp.argv[:2] != ["accelerate", "launch"]:
        raise LoraStudioError("the export's command does not start with 'accelerate launch'; export again.")
    return [py, "-m", "accelerate.commands.launch", *exp.argv[2:]]


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the launcher and the training it started (the whole process group), politely first."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            proc.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            if os.name == "nt":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return cancel.is_set()
    return bool(cancel())


def launch(sd_scripts_dir, exp: Export, progress=None, log=None, cancel=None, python=None) -> int:
    """Run the export with the checkout's venv; `log(line)` gets every output line except the progress bar,
    `progress(SdProgress)` each new bar state; `cancel` (an Event or a callable) stops it. Returns the exit
    code (negative: ended by a signal, e.g. after cancel)."""
    argv = launch_argv(sd_scripts_dir, exp, python)
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME"):     # the caller's (WebUI's) paths must not leak into sd-scripts' venv
        env.pop(k, None)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    kw = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
    try:
        proc = subprocess.Popen(argv, cwd=os.path.abspath(sd_scripts_dir), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    except OSError as exc:
        raise LoraStudioError(f"cannot start '{argv[0]}': {exc.strerror or exc}; check the sd-scripts venv.") \
            from None
    pieces: list[bytes] = []
    lock = threading.Lock()

    def reader():
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with lock:
                pieces.append(chunk)
            if not chunk:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    state = {"epoch": 0, "epochs": 0, "last": None}
    buf = ""

    def handle(line: str) -> None:
        m = _BAR.match(line.lstrip())
        if m is not None:
            parsed = _bar_values(m)
            if parsed != state["last"]:
                state["last"] = parsed
                if progress is not None:
                    progress(SdProgress(*parsed, epoch=state["epoch"], epochs=state["epochs"]))
            # a log line written while the bar is open follows the last frame without a line break
            line = line.lstrip()[m.end():]
        line = line.rstrip()
        m = _EPOCH.match(line.strip())
        if m:
            state["epoch"], state["epochs"] = int(m.group(1)), int(m.group(2))
        if line and log is not None:
            log(line)

    import codecs
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    done = False
    try:
        while not done:
            if _cancelled(cancel):
                _stop(proc)
            with lock:
                got, pieces[:] = list(pieces), []
            if not got:
                time.sleep(0.05)
                continue
            for chunk in got:
                if not chunk:
                    done = True
                    text = decoder.decode(b"", final=True)
                else:
                    text = decoder.decode(chunk)
                buf += text
                parts = re.split(r"\r\n|\r|\n", buf)    # tqdm redraws with \r, logs end with \n
                buf = parts.pop()
                for part in parts:
                    handle(part)
        if buf:
            handle(buf)
        return proc.wait()
    finally:
        if proc.poll() is None:               # the caller's callback raised, or Ctrl-C: do not leave it running
            _stop(proc)
        t.join(1.0)
        proc.stdout.close()
