"""Fake of the generation loop (process_images_inner order of A1111 v1.10.1, no real sampling), and
process_images' override_settings (v1.10.1: a checkpoint override that is not a known alias is dropped; each
setting is set, the checkpoint reloaded; with override_settings_restore_afterwards the settings go back after
the job, while the overriding model stays loaded until the next job reloads the setting's one)."""
from modules import extra_networks, script_callbacks, sd_models, shared
from modules.infotext_utils import quote


class Processing:
    # A1111 keeps the conditioning caches on the class: shared by every job until the key changes.
    cached_c = [None, None]
    cached_hr_c = [None, None]

    def __init__(self, prompt="", negative_prompt="", seed=1, n_iter=1, batch_size=1, steps=3, enable_hr=False,
                 hr_prompt="", hr_second_pass_steps=2, scripts=None):
        self.prompt, self.negative_prompt, self.seed = prompt, negative_prompt, seed
        self.n_iter, self.batch_size, self.steps = n_iter, batch_size, steps
        self.enable_hr, self.hr_prompt, self.hr_second_pass_steps = enable_hr, hr_prompt, hr_second_pass_steps
        self.scripts = scripts
        self.extra_generation_params = {}
        self.comments = {}
        self.disable_extra_networks = False
        self.is_hr_pass = False
        self.observer = None            # observer(p, pass_name, step) during "sampling"
        self.cond_fn = None             # cond_fn(p) → what "conditioning" the text encoder produces now
        self.conds_used = []            # (iteration, pass, cond) actually used (possibly from the cache)
        self.cached_c = Processing.cached_c
        self.cached_hr_c = Processing.cached_hr_c

    @property
    def sd_model(self):
        return shared.sd_model

    def comment(self, text):
        self.comments[text] = 1


class StableDiffusionProcessingTxt2Img(Processing):
    """The txt2img job the Training tab's grid builds (keyword arguments as v1.10.1's dataclass)."""

    def __init__(self, sd_model=None, prompt="", negative_prompt="", seed=1, steps=3, width=64, height=64,
                 cfg_scale=7.0, batch_size=1, n_iter=1, do_not_save_samples=False, do_not_save_grid=False,
                 override_settings=None, override_settings_restore_afterwards=True, **kw):
        super().__init__(prompt=prompt, negative_prompt=negative_prompt, seed=seed, n_iter=n_iter,
                         batch_size=batch_size, steps=steps, **kw)
        self.width, self.height, self.cfg_scale = width, height, cfg_scale
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.closed = False

    def close(self):
        self.closed = True


class Processed:
    def __init__(self, infotexts, trace, images=()):
        self.infotexts, self.trace, self.images = infotexts, trace, list(images)


rendered = []       # fake only: (prompt as sampled, negative prompt, loaded checkpoint title) per txt2img image


def _sample(p, steps, pass_name, trace):
    for step in range(steps):
        script_callbacks.cfg_denoiser_callback(script_callbacks.CFGDenoiserParams(step, steps))
        if p.observer is not None:
            trace.append((p.iteration, pass_name, step, p.observer(p)))


def _conds(p, prompts, data, cache, pass_name):
    """Cache keyed by prompt text and tag items only, as A1111's get_conds_with_caching."""
    key = (tuple(prompts), tuple(sorted((k, tuple(tuple(x.items) for x in v)) for k, v in data.items())))
    if cache[0] != key:
        cache[1] = p.cond_fn(p) if p.cond_fn else None
        cache[0] = key
    p.conds_used.append((p.iteration, pass_name, cache[1]))


def create_infotext(p, index):
    params = {"Steps": p.steps, "Seed": p.all_seeds[index], "Size": "64x64", **p.extra_generation_params}
    text = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    return f"{p.all_prompts[index]}\n{text}"


def process_images(p):
    override = getattr(p, "override_settings", None)
    if override is None:
        return _process_images_inner(p)
    stored = {k: shared.opts.data[k] for k in override if k in shared.opts.data}
    try:
        if sd_models.checkpoint_aliases.get(override.get("sd_model_checkpoint")) is None:
            override.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()
        for k, v in override.items():
            shared.opts.data[k] = v
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
        res = _process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            shared.opts.data.update(stored)
    return res


def _process_images_inner(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    total = p.n_iter * p.batch_size
    p.all_prompts = [p.prompt] * total
    p.all_hr_prompts = [p.hr_prompt or p.prompt] * total
    p.all_seeds = [int(p.seed) + i for i in range(total)]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, trace = [], []
    for n in range(p.n_iter):
        p.iteration = n
        sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.seeds = p.all_prompts[sl], p.all_seeds[sl]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
        p.prompts, p.extra_network_data = extra_networks.parse_prompts(p.prompts)
        if p.enable_hr:
            p.hr_prompts, p.hr_extra_network_data = extra_networks.parse_prompts(p.all_hr_prompts[sl])
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        _conds(p, p.prompts, p.extra_network_data, p.cached_c, "first")
        _sample(p, p.steps, "first", trace)
        if p.enable_hr:
            p.is_hr_pass = True
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.hr_extra_network_data)
            _conds(p, p.hr_prompts, p.hr_extra_network_data, p.cached_hr_c, "hires")
            _sample(p, p.hr_second_pass_steps, "hires", trace)
            p.is_hr_pass = False
        for i in range(p.batch_size):
            infotexts.append(create_infotext(p, n * p.batch_size + i))
    images = []
    if isinstance(p, StableDiffusionProcessingTxt2Img):
        from PIL import Image
        info = getattr(shared.sd_model, "sd_checkpoint_info", None)
        for prompt in p.all_prompts:
            rendered.append((prompt, p.negative_prompt, getattr(info, "title", None)))
            images.append(Image.new("RGB", (p.width, p.height), (len(rendered) % 256, 0, 0)))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    return Processed(infotexts, trace, images)
