"""Training from the WebUI: each run is `python -m lib_lora train --config RUN.toml --progress-json` in a
subprocess of the WebUI's own Python (an argument list, never a shell).

Why a subprocess: an error, a crash or an out-of-memory in the trainer ends that process only, so the WebUI
stays usable and its packages and loaded model are untouched. The run holds the WebUI's queue lock while it
trains (the Training tab's queue calls us under ctx.wrap_gpu_call, as the WebUI's own embedding training
is wrapped), so no generation competes for the GPU; on CUDA the WebUI's model is moved out of VRAM for the
run and loaded back afterwards. Progress and loss arrive as JSON lines on the child's stdout, its log on
stderr. Cancel writes "cancel" to its stdin: the trainer stops after the current step, and every file it
saved is complete (the trainer writes to a temporary name and renames); only if it does not exit in time is
it terminated, which still leaves no half-written file under a final name.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from lib_lora.errors import LoraStudioError

from . import env

CANCEL_GRACE_S = 600.0      # one optimizer step of a large model on a slow GPU can take minutes
TERMINATE_GRACE_S = 15.0


def command(config_path, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "lib_lora", "train", "--config", str(config_path), "--progress-json"]


# A WebUI started through `accelerate launch` passes these on; the child is one plain process (the trainer
# would otherwise set up accelerate's process group for a run of one).
LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def child_env(root: Path = env.EXT_DIR) -> dict:
    """The WebUI's environment with the extension on PYTHONPATH (so `-m lib_lora` is this extension's)."""
    out = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("ACCELERATE_")}
    out["PYTHONPATH"] = os.pathsep.join([str(root), *[p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]])
    out["PYTHONUNBUFFERED"] = "1"
    return out


def missing_packages(python: str | None = None) -> str | None:
    """One line naming what the trainer lacks in the Python that runs it, or None. lycoris-lora makes every
    network; its 4.x releases call torch.compiler.is_compiling (torch >= 2.3), so on the WebUI's torch 2.1.2
    only 3.1.x works. Other Pythons are asked in a child process (nothing is imported into the WebUI)."""
    if python and os.path.abspath(python) != os.path.abspath(sys.executable):    # (a venv's python is a symlink)
        try:
            out = subprocess.run([python, "-c", _CHECK], capture_output=True, text=True, timeout=120)
            found = json.loads(out.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            return f"Training cannot start: {python} does not answer ({exc})."
        return _missing(found.get("lycoris-lora"), found.get("torch"))
    return _missing(_version("lycoris-lora"), _version("torch"))


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(v: str) -> tuple:
    nums = []
    for part in v.split("+")[0].split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        nums.append(int(digits or 0))
    return tuple(nums)


def _missing(lycoris: str | None, torch_v: str | None) -> str | None:
    if lycoris is None:
        return ("Training needs lycoris-lora, which the WebUI's Python lacks: restart the WebUI once (the "
                "extension's installer adds it), or run `pip install \"lycoris-lora>=3.1,<4\"` in the WebUI's venv.")
    if torch_v and _major_minor(torch_v) < (2, 3) and _major_minor(lycoris) >= (4, 0):
        return (f"Training needs lycoris-lora 3.1.x on torch {torch_v} (4.x needs torch 2.3 or newer): run "
                "`pip install \"lycoris-lora>=3.1,<4\"` in the WebUI's venv.")
    return None


_CHECK = ("import json\nfrom importlib import metadata as m\nout = {}\n"
          "for d in ('lycoris-lora', 'torch'):\n    try:\n        out[d] = m.version(d)\n"
          "    except m.PackageNotFoundError:\n        out[d] = None\nprint(json.dumps(out))\n")


class SubprocessHost:
    """`host(run, cancel_event)` for lib_lora.ui.train_tab.TrainQueue: trains `run.toml_path` in a child
    process, feeding run.on_progress / run.files / run.say; raises LoraStudioError with the child's last error
    line when it fails, train_tab's stop signal when cancelled."""

    def __init__(self, python: str | None = None, root: Path = env.EXT_DIR, free_vram: bool | None = None,
                 cancel_grace: float = CANCEL_GRACE_S):
        self.python, self.root, self.free_vram, self.cancel_grace = python, Path(root), free_vram, cancel_grace

    def render_grid(self, *args, **kw):
        """The Training tab's epoch × weight grid with the WebUI's own txt2img (lora_studio_webui.train_grid)."""
        from .train_grid import render_grid
        return render_grid(*args, **kw)

    def unavailable(self) -> str | None:
        """One line when the trainer cannot run in this Python (shown by the tab; Start refuses)."""
        return missing_packages(self.python)

    def __call__(self, run, cancel: threading.Event) -> None:
        problem = self.unavailable()
        if problem:
            raise LoraStudioError(problem)
        if not run.toml_path:
            raise LoraStudioError("this run has no config file to start from; press Start again.")
        with _vram_freed(self.free_vram):
            self._train(run, cancel)

    def _train(self, run, cancel: threading.Event) -> None:
        from lib_lora.ui.train_tab import _Stopped

        proc = subprocess.Popen(command(run.toml_path, self.python), cwd=str(self.root), env=child_env(self.root),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
        errors: list[str] = []
        done: dict = {}
        readers = [threading.Thread(target=self._read_stderr, args=(proc, run, errors), daemon=True),
                   threading.Thread(target=self._read_stdout, args=(proc, run, done), daemon=True)]
        for t in readers:
            t.start()
        finished = threading.Event()
        stopper = threading.Thread(target=self._stop_on_cancel, args=(proc, cancel, finished), daemon=True)
        stopper.start()
        try:
            code = proc.wait()
        finally:
            finished.set()
            for t in readers:
                t.join(timeout=10)
            _close(proc)
        if done.get("cancelled") or (cancel.is_set() and code != 0):
            raise _Stopped()
        if code != 0:
            reason = next((e for e in reversed(errors) if e.strip()), f"exit code {code}").strip()
            reason = reason[len("error: "):] if reason.startswith("error: ") else reason
            if "out of memory" in reason.lower():
                reason += " (lower train_batch_size or resolution, or turn on gradient_checkpointing)"
            raise LoraStudioError(f"training '{run.name}' failed: {reason.strip()}")

    @staticmethod
    def _read_stdout(proc, run, done: dict) -> None:
        for line in proc.stdout:
            line = line.strip()
            try:
                msg = json.loads(line) if line.startswith("{") else None
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                if line:
                    run.say(line)
                continue
            ev = msg.get("event")
            if ev == "progress":
                run.on_progress(msg.get("step", 0), msg.get("total", 0), msg.get("epoch", 0), msg.get("epochs", 0),
                                msg.get("loss"), msg.get("eta"))
            elif ev == "file" and msg.get("path"):
                run.files.append(str(msg["path"]))
            elif ev == "done":
                done.update(msg)

    @staticmethod
    def _read_stderr(proc, run, errors: list) -> None:
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                run.say(line)
                errors.append(line)
                del errors[:-20]

    def _stop_on_cancel(self, proc, cancel: threading.Event, finished: threading.Event) -> None:
        while not cancel.wait(0.2):
            if finished.is_set():
                return
        if finished.is_set():
            return
        try:        # the trainer stops after its current step and exits by itself
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            pass
        if finished.wait(self.cancel_grace):
            return
        proc.terminate()
        if not finished.wait(TERMINATE_GRACE_S):
            proc.kill()


def _close(proc) -> None:
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


class _vram_freed:
    """On CUDA: the WebUI's model leaves VRAM for the run and comes back after it (also after an error)."""

    def __init__(self, wanted: bool | None):
        self.wanted = wanted
        self.done = False

    def __enter__(self):
        want = self.wanted
        if want is None:
            try:
                import torch
                want = torch.cuda.is_available()
            except Exception:  # noqa: BLE001 — no torch, nothing to free
                want = False
        if want:
            try:
                from modules import sd_models
                sd_models.unload_model_weights()
                self.done = True
            except Exception as exc:  # noqa: BLE001 — training still runs; it may just have less VRAM
                env.log.warning("LoRA Studio: could not move the WebUI's model out of VRAM for training: %s", exc)
        return self

    def __exit__(self, *exc):
        if self.done:
            try:
                from modules import sd_models
                sd_models.reload_model_weights()
            except Exception as e:  # noqa: BLE001 — the next generation loads it again
                env.log.warning("LoRA Studio: the WebUI's model could not be reloaded after training: %s", e)
        return False

