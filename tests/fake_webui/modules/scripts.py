"""Fake of modules.scripts: Script/AlwaysVisible, scripts_data, a loader that mimics load_scripts()."""
import importlib.util
import os
import sys
from collections import namedtuple

from modules import script_callbacks

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
current_basedir = None


class Script:
    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)   # A1111 names it by file name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_scripts(script_files):
    """`script_files`: [(basedir, path)] in load order (root scripts, built-in extensions, user extensions)."""
    global current_basedir
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for basedir, path in script_files:
        saved = sys.path
        sys.path = [basedir] + sys.path                # only during the import, as A1111 does
        current_basedir = basedir
        try:
            module = load_module(path)
            for obj in list(module.__dict__.values()):
                if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script:
                    scripts_data.append(ScriptClassData(obj, path, basedir, module))
        finally:
            sys.path = saved
            current_basedir = None


def basedir():
    return current_basedir


class ScriptRunner:
    """Calls the AlwaysVisible scripts' hooks (args: none, like an API call with defaults)."""

    def __init__(self):
        self.alwayson = []
        for d in scripts_data:
            s = d.script_class()
            if s.show(False) is AlwaysVisible:
                self.alwayson.append(s)

    def _call(self, hook, p, **kw):
        for s in self.alwayson:
            fn = getattr(s, hook, None)
            if fn is not None:
                fn(p, **kw)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kw):
        self._call("before_process_batch", p, **kw)
