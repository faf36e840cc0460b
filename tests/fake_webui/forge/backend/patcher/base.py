"""Fake backend.patcher.base.ModelPatcher with Forge's add_patches contract (keyword-only, per-identifier)."""


class ModelPatcher:
    def __init__(self, model, log=None):
        self.model = model
        self.lora_patches = {}
        self.calls = [] if log is None else log        # shared by clones: tests read what was added

    def clone(self):
        n = type(self)(self.model, self.calls)
        n.lora_patches = self.lora_patches.copy()
        return n

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        ident = (filename, strength_patch, strength_model, online_mode)
        names = {k for k, _ in self.model.named_parameters()}
        this, loaded = {}, set()
        for k in patches:
            key = k if isinstance(k, str) else k[0]
            if key in names:
                loaded.add(k)
                this.setdefault(key, []).append([strength_patch, patches[k], strength_model, None, None])
        self.lora_patches[ident] = this                # same identifier again: replaces (as Forge does)
        self.calls.append({"filename": filename, "strength_patch": strength_patch,
                           "strength_model": strength_model, "online_mode": online_mode,
                           "keys": sorted(this)})
        return loaded

    def merged(self, key):
        """The weight Forge would compute for `key`: original + every recorded LoRA patch."""
        w = dict(self.model.named_parameters())[key].detach().clone().float()
        for entries in self.lora_patches.values():
            for strength, (kind, v), strength_model, _, _ in entries.get(key, []):
                assert kind == "lora" and strength_model == 1.0
                up, down, alpha = v[0].float(), v[1].float(), v[2]
                scale = alpha / down.shape[0] if alpha is not None else 1.0
                w += strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        return w
