"""User-facing errors: every message names the problem and the fix."""


class LoraStudioError(Exception):
    """An error whose message is shown to the user as is (one clear line)."""


class LoraFileError(LoraStudioError):
    """A LoRA/checkpoint file that cannot be read: corrupt, truncated, pickle not allowed..."""


class ArchitectureMismatch(LoraStudioError):
    """A LoRA made for another model family than the loaded one."""


class SyntaxProblem(LoraStudioError):
    """A bad `<lora:...>` tag item: wrong weight count, malformed number, unknown preset."""
