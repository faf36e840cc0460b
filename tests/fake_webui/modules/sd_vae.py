"""Fake of modules.sd_vae: the VAE list as A1111 1.10.1 keeps it ({name relative to models/VAE: file}, refilled by
refresh_vae_list from the folder)."""
import os

vae_dict = {}
refreshes = []               # fake only: one entry per refresh_vae_list call


def refresh_vae_list():
    from modules import paths
    vae_dict.clear()
    root = os.path.join(paths.data_path, "models", "VAE")
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith((".safetensors", ".pt", ".ckpt")):
                full = os.path.join(dirpath, f)
                vae_dict[os.path.relpath(full, root)] = full
    refreshes.append(True)
