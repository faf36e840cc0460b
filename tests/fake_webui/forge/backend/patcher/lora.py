"""Fake backend.patcher.lora: key maps from the model's parameter names, LoRA up/down/alpha → patches."""


def _kohya_names(canon: str) -> list:
    from tests.factory import module_name
    names = []
    try:
        names.append(module_name("sd15", "kohya", canon, None))
    except Exception:
        pass
    return names


def model_lora_keys_unet(model, key_map={}):
    for k, _ in model.named_parameters():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            path = k[len("diffusion_model."):-len(".weight")]
            key_map["lora_unet_" + path.replace(".", "_")] = k
            key_map["diffusion_model." + path] = k
            for name in _kohya_names("model." + k[:-len(".weight")]):
                key_map[name] = k
    return key_map


def model_lora_keys_clip(model, key_map={}):
    for k, _ in model.named_parameters():
        if k.startswith("clip_l.transformer.text_model.encoder.layers.") and k.endswith(".weight"):
            canon = "cond_stage_model." + k[len("clip_l."):-len(".weight")]
            for name in _kohya_names(canon):
                key_map[name] = k
    return key_map


def load_lora(lora, to_load):
    patch_dict, used = {}, set()
    for x, target in to_load.items():
        up, down, alpha = f"{x}.lora_up.weight", f"{x}.lora_down.weight", f"{x}.alpha"
        if up in lora:
            a = lora[alpha].item() if alpha in lora else None
            patch_dict[target] = ("lora", (lora[up], lora[down], a, None, None))
            used.update({up, down, alpha})
    return patch_dict, {k: v for k, v in lora.items() if k not in used}
