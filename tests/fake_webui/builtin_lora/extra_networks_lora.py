"""Fake built-in `lora` handler: float() parsing as in A1111, so `<lora:x:1:face>` raises ValueError."""
from modules import extra_networks

import networks

calls = []


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        calls.append([list(x.items) for x in params_list])
        parsed = []
        for params in params_list:
            te = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            unet = float(params.positional[2]) if len(params.positional) > 2 else te
            parsed.append(networks.FakeNet(params.positional[0], te, unet))
        networks.loaded_networks[:] = parsed

    def deactivate(self, p):
        pass
