"""Fake of the built-in Lora's `networks` module: the state LoRA Studio must coexist with.

`merge(module, delta)` does what the built-in's patched forward does when its wanted set changes: takes a
backup at first use, adds its delta in place and records the names; `forward_update(module)` is its check on
every forward (restore the backup when the wanted set differs)."""
import torch

loaded_networks = []


class FakeNet:
    def __init__(self, name, te=1.0, unet=1.0, dyn=None, delta=None):
        self.name, self.te_multiplier, self.unet_multiplier, self.dyn_dim = name, te, unet, dyn
        self.delta = delta or {}


def wanted():
    return tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)


def network_restore_weights_from_backup(module):
    # Like the real one: an in-place copy_ with no no_grad of its own (the caller must provide it).
    backup = getattr(module, "network_weights_backup", None)
    if backup is not None:
        module.weight.copy_(backup)


def forward_update(module):
    if getattr(module, "network_current_names", ()) == wanted():
        return
    if getattr(module, "network_weights_backup", None) is None and wanted() != ():
        module.network_weights_backup = module.weight.detach().clone()
    with torch.no_grad():                          # the real forward runs inside processing's no_grad
        network_restore_weights_from_backup(module)
        for net in loaded_networks:
            d = net.delta.get(getattr(module, "network_layer_name", None))
            if d is not None:
                module.weight += d * net.unet_multiplier
    module.network_current_names = wanted()
