"""Fake of modules.sd_models: the loaded model, the checkpoint list and its aliases, reload_model_weights (the
weights of the checkpoint opts.sd_model_checkpoint names, loaded in place, then the model_loaded callbacks)."""
import os


class _ModelData:
    sd_model = None


model_data = _ModelData()

checkpoints_list = {}        # title → CheckpointInfo
checkpoint_aliases = {}      # title, name, model_name → CheckpointInfo
loads = []                   # fake only: titles loaded by reload_model_weights, in order


class CheckpointInfo:
    def __init__(self, filename, state=None, shorthash="0123abcd"):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.model_name = os.path.splitext(self.name)[0]
        self.shorthash = shorthash
        self.title = f"{self.name} [{shorthash}]"
        self.state = state           # fake only: the tensors this checkpoint loads

    def register(self):
        checkpoints_list[self.title] = self
        for key in (self.title, self.name, self.model_name):
            checkpoint_aliases[key] = self
        return self


def reload_model_weights(sd_model=None, info=None):
    from modules import script_callbacks, shared
    info = info or checkpoint_aliases.get(getattr(shared.opts, "sd_model_checkpoint", None))
    model = shared.sd_model
    if info is None or getattr(model, "sd_checkpoint_info", None) is info:
        return model
    model.load_state_dict(info.state, strict=False)
    model.sd_checkpoint_info = info
    loads.append(info.title)
    script_callbacks.model_loaded_callback(model)
    return model
