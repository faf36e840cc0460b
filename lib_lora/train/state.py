"""Run state for resume, without pickle: network parameters and optimizer tensors in one .safetensors file,
everything else (step, epoch, schedule, optimizer structure) in `train_state.json`, written last, so a state
folder without it is incomplete and is refused."""

from __future__ import annotations

import json
import os

import torch

from lib_lora import fileio
from lib_lora.errors import LoraStudioError

STATE_JSON = "train_state.json"
STATE_TENSORS = "state.safetensors"


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        plain = {}
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous()
                plain[k] = {"tensor": f"opt/{idx}/{k}"}
            else:
                plain[k] = v
        state[str(idx)] = plain
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _join_optimizer(structure: dict, tensors: dict) -> dict:
    state = {}
    for idx, entry in structure["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in entry.items()}
    return {"state": state, "param_groups": structure["param_groups"]}


def save_state(folder: str, network, optimizer, info: dict) -> str:
    os.makedirs(folder, exist_ok=True)
    tensors = {f"net/{k}": v.detach().cpu().contiguous() for k, v in _net_tensors(network).items()}
    opt_tensors, opt_structure = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    fileio.atomic_save_safetensors(tensors, os.path.join(folder, STATE_TENSORS), overwrite=True)
    info = dict(info, optimizer=opt_structure)
    fileio.atomic_write_text(os.path.join(folder, STATE_JSON), json.dumps(info, indent=1, default=str))
    return folder


def _net_tensors(network) -> dict:
    # the modules' own parameters and buffers (LyCORIS' state_dict() is the file form: scaled, renamed)
    out = {f"p/{k}": p for k, p in network.named_parameters()}
    out.update({f"b/{k}": b for k, b in network.named_buffers()})
    return out


def load_state(folder: str) -> tuple[dict, dict]:
    """(info, tensors) of a state folder; one-line errors for what is missing."""
    js = os.path.join(folder, STATE_JSON)
    if not os.path.isdir(folder):
        raise LoraStudioError(f"resume folder '{folder}' does not exist; give a '<name>-…-state' folder.")
    if not os.path.isfile(js):
        raise LoraStudioError(f"'{folder}' has no {STATE_JSON}: it is not a complete training state; pick another "
                              "state folder.")
    try:
        info = json.loads(fileio.read_small_text(js, "training state", max_bytes=64 << 20))
    except ValueError:
        raise LoraStudioError(f"'{js}' is damaged; pick another state folder.") from None
    tensors, _ = fileio.read_tensors(os.path.join(folder, STATE_TENSORS))
    return info, tensors


def restore(network, optimizer, info: dict, tensors: dict) -> None:
    own = _net_tensors(network)
    missing = [k for k in own if f"net/{k}" not in tensors]
    if missing:
        raise LoraStudioError(f"the state was saved with other network settings ({len(missing)} tensors differ, "
                              f"e.g. {missing[0]}); resume with the config it was made with.")
    with torch.no_grad():
        for k, t in own.items():
            src = tensors[f"net/{k}"]
            if src.shape != t.shape:
                raise LoraStudioError(f"the state's {k} has shape {tuple(src.shape)}, the network "
                                      f"{tuple(t.shape)}; resume with the config it was made with.")
            t.copy_(src)
    sd = _join_optimizer(info["optimizer"], tensors)
    _match_group_order(sd, optimizer, info)
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError) as exc:
        raise LoraStudioError(f"the state's optimizer does not fit this run ({exc}); resume with the same "
                              "optimizer settings.") from None


def _match_group_order(sd: dict, optimizer, info: dict) -> None:
    """A state saved while the groups came U-Net first (before they followed sd-scripts' order, text encoder
    first) holds the same named groups in another order: its groups, and the schedule's base rates with them,
    are put in this run's order, so each parameter gets its own moments back (torch pairs groups by position)."""
    saved = [g.get("name") for g in sd["param_groups"]]
    now = [g.get("name") for g in optimizer.param_groups]
    if saved == now or None in now or len(set(now)) != len(now) or sorted(saved) != sorted(now):
        return
    perm = [saved.index(n) for n in now]
    sd["param_groups"] = [sd["param_groups"][i] for i in perm]
    sched = info.get("schedule") or {}
    if len(sched.get("base", [])) == len(perm):
        sched["base"] = [sched["base"][i] for i in perm]
