"""Fake of modules.extra_networks: registry semantics and activation order of A1111 v1.10.1."""
import re
from collections import defaultdict

extra_network_registry = {}
extra_network_aliases = {}
errors_seen = []          # exceptions A1111 would print and swallow


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(obj):
    extra_network_registry[obj.name] = obj            # plain dict: last registration wins


def register_extra_network_alias(obj, alias):
    extra_network_aliases[alias] = obj


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def lookup_extra_networks(data):
    res = {}
    for name, args in list(data.items()):
        net = extra_network_registry.get(name)
        alias = extra_network_aliases.get(name)
        if alias is not None and net is None:         # alias only when the name is not registered
            net = alias
        if net is None:
            continue
        res.setdefault(net, []).extend(args)
    return res


def activate(p, data):
    activated = []
    for net, args in lookup_extra_networks(data).items():
        try:
            net.activate(p, args)
            activated.append(net)
        except Exception as e:                        # printed and swallowed per network
            errors_seen.append(e)
    for name, net in extra_network_registry.items():
        if net in activated:
            continue
        try:
            net.activate(p, [])
        except Exception as e:
            errors_seen.append(e)


def deactivate(p, data):
    found = lookup_extra_networks(data)
    for net in list(found) + [n for n in extra_network_registry.values() if n not in found]:
        try:
            net.deactivate(p)
        except Exception as e:
            errors_seen.append(e)


re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, extra = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra is None:                            # only the first prompt supplies the data
            extra = parsed
        res.append(updated)
    return res, extra
