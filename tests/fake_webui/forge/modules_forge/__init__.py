"""Fake Forge marker package: its presence is how LoRA Studio detects Forge."""
