"""Fake of modules.shared: opts with defaults from OptionInfo, cmd_opts namespace, sd_model."""
import types


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **kw):
        self.default, self.label, self.section = default, label, section

    def info(self, text):
        return self

    def needs_reload_ui(self):
        return self

    def needs_restart(self):
        return self


class Options:
    def __init__(self):
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options()
opts.data.update({"extra_networks_default_multiplier": 1.0, "samples_format": "png"})
cmd_opts = types.SimpleNamespace(lora_dir="models/Lora", lyco_dir_backcompat="models/LyCORIS",
                                 disable_extension_access=False, api_auth=None, ckpt_dir=None)
sd_model = None
state = types.SimpleNamespace(interrupted=False, skipped=False)
