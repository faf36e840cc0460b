"""Fake of the built-in Lora's script: registers `lora` + alias `lyco` in before_ui."""
from modules import extra_networks, script_callbacks

import extra_networks_lora
import networks


def before_ui():
    net = extra_networks_lora.ExtraNetworkLora()
    networks.extra_network_lora = net               # the built-in keeps its handler here
    extra_networks.register_extra_network(net)
    extra_networks.register_extra_network_alias(net, "lyco")


script_callbacks.on_before_ui(before_ui)
