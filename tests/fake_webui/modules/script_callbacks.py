"""Fake of modules.script_callbacks: named lists, cleared on reload; before_ui and script_unloaded reversed."""
callback_map = {k: [] for k in (
    "app_started", "model_loaded", "ui_tabs", "ui_settings", "cfg_denoiser", "infotext_pasted",
    "script_unloaded", "before_ui")}


def clear_callbacks():
    for v in callback_map.values():
        v.clear()


def _add(cat, fn):
    callback_map[cat].append(fn)


def on_app_started(fn): _add("app_started", fn)
def on_model_loaded(fn): _add("model_loaded", fn)
def on_ui_tabs(fn): _add("ui_tabs", fn)
def on_ui_settings(fn): _add("ui_settings", fn)
def on_cfg_denoiser(fn): _add("cfg_denoiser", fn)
def on_infotext_pasted(fn): _add("infotext_pasted", fn)
def on_script_unloaded(fn): _add("script_unloaded", fn)
def on_before_ui(fn): _add("before_ui", fn)


def app_started_callback(demo, app):
    for fn in list(callback_map["app_started"]):
        fn(demo, app)


def before_ui_callback():
    for fn in reversed(list(callback_map["before_ui"])):
        fn()


def model_loaded_callback(sd_model):
    for fn in list(callback_map["model_loaded"]):
        fn(sd_model)


def script_unloaded_callback():
    for fn in reversed(list(callback_map["script_unloaded"])):
        fn()


def ui_settings_callback():
    for fn in list(callback_map["ui_settings"]):
        fn()


def infotext_pasted_callback(infotext, params):
    for fn in list(callback_map["infotext_pasted"]):
        fn(infotext, params)


class CFGDenoiserParams:
    def __init__(self, sampling_step, total_sampling_steps):
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def cfg_denoiser_callback(params):
    for fn in list(callback_map["cfg_denoiser"]):
        fn(params)


def ui_tabs_callback():
    res = []
    for fn in list(callback_map["ui_tabs"]):
        res += fn() or []
    return res
