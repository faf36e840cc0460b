"""Fake of Forge's built-in Lora module `networks` (extensions-builtin/sd_forge_lora): records activations."""


class ExtraNetworkLora:
    def __init__(self):
        self.name = "lora"
        self.calls = []

    def activate(self, p, params_list):
        self.calls.append([list(x.items) for x in params_list])

    def deactivate(self, p):
        pass


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    pass


extra_network_lora = ExtraNetworkLora()
