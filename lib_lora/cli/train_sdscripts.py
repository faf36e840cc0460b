"""`train --export-sd-scripts DIR` / `train --sd-scripts DIR`: the kohya sd-scripts side of the `train` verb
(export the run, or run it with the checkout's venv and show its progress on the terminal)."""

from __future__ import annotations

import os
import sys


def run_sd_scripts(cfg, args, quiet: bool = False) -> int:
    from lib_lora.cli.progress import PhaseProgress, fmt_eta
    from lib_lora.train import sdscripts

    checkout = getattr(args, "sd_scripts", None)
    out_dir = getattr(args, "export_sd_scripts", None)
    if checkout and not out_dir:
        out_dir = os.path.join(cfg.output_dir or ".", "sd-scripts")
    # launching re-exports into its own folder each time (generated files); a user-named folder is not
    # overwritten
    exp = sdscripts.export(cfg, out_dir, overwrite=bool(checkout and not getattr(args, "export_sd_scripts", None)))
    print(f"wrote {exp.config_path}", file=sys.stderr)
    print(f"wrote {exp.dataset_path}", file=sys.stderr)
    if not checkout:
        print(exp.command())
        return 0
    # checks the folder, venv and script before anything starts
    sdscripts.launch_argv(checkout, exp, getattr(args, "sd_scripts_python", None))
    bar = PhaseProgress({"train": "steps"}, enabled=False if quiet else None)
    last = {"step": -1}

    def progress(p) -> None:
        bar("train", p.step, p.total)
        if not bar.enabled and not quiet and (p.step == p.total or p.step - last["step"] >= 50):
            last["step"] = p.step
            loss = "" if p.loss is None else f" loss {p.loss:.4f}"
            print(f"step {p.step}/{p.total}{loss}, ETA {fmt_eta(p.eta)}", file=sys.stderr)

    def log(line: str) -> None:
        bar.close()
        print(line, file=sys.stderr)

    print(f"running in {os.path.abspath(checkout)}: {exp.command()}", file=sys.stderr)
    try:
        code = sdscripts.launch(checkout, exp, progress=progress, log=log,
                                python=getattr(args, "sd_scripts_python", None))
    finally:
        bar.close()
    if code != 0:
        print(f"sd-scripts stopped with exit code {code}; its log is above.", file=sys.stderr)
        return 1
    return 0
