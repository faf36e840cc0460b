"""fileio.resolve_inside: the one containment check for every user-given path (UI, tagger, CLI)."""

import os

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.fileio import resolve_inside


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "loras"
    (root / "sub").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"x")
    (root / "sub" / "b.safetensors").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return root, outside


def _refused(path, roots, *words):
    with pytest.raises(LoraStudioError) as exc:
        resolve_inside(path, roots, "LoRA")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("LoRA")
    for w in words:
        assert w in msg
    return msg


def test_inside_absolute_and_relative(tree):
    root, _ = tree
    assert resolve_inside(root / "a.safetensors", [root], "LoRA") == root / "a.safetensors"
    assert resolve_inside(str(root / "sub" / "b.safetensors"), [str(root)], "LoRA") == root / "sub" / "b.safetensors"
    assert resolve_inside("sub/b.safetensors", [root], "LoRA") == root / "sub" / "b.safetensors"
    # not existing yet (a file about to be written) is fine
    assert resolve_inside(root / "new.safetensors", [root], "LoRA") == root / "new.safetensors"


def test_relative_name_found_in_second_root(tree, tmp_path):
    root, _ = tree
    other = tmp_path / "more"
    other.mkdir()
    (other / "c.safetensors").write_bytes(b"x")
    assert resolve_inside("c.safetensors", [root, other], "LoRA") == other / "c.safetensors"
    assert resolve_inside("missing.safetensors", [root, other], "LoRA") == root / "missing.safetensors"


def test_outside_refused(tree):
    root, outside = tree
    _refused(outside / "secret.txt", [root], "outside the configured folders", str(root))
    _refused("/etc/passwd", [root], "/etc/passwd")
    # a sibling folder whose name starts like the root is not inside it
    sib = root.parent / (root.name + "2")
    sib.mkdir()
    _refused(sib / "x.safetensors", [root])


def test_dotdot_refused_even_when_it_lands_inside(tree):
    root, outside = tree
    _refused(str(root / ".." / "outside" / "secret.txt"), [root], "'..'")
    _refused("../outside/secret.txt", [root], "'..'")
    _refused(str(root / "sub" / ".." / "a.safetensors"), [root], "'..'")


def test_dotdot_through_link_refused(tree):
    """`root/link/..` is the link target's parent for the OS: a lexical check alone would be fooled."""
    root, outside = tree
    deep = outside / "deep"
    deep.mkdir()
    os.symlink(deep, root / "link")
    _refused(str(root / "link" / ".." / "secret.txt"), [root], "'..'")


def test_user_symlink_inside_root_accepted(tree):
    """A link the user placed in the LoRA folder is their choice, even when it points outside."""
    root, outside = tree
    os.symlink(outside / "secret.txt", root / "linked.safetensors")
    os.symlink(outside, root / "linkdir")
    assert resolve_inside(root / "linked.safetensors", [root], "LoRA") == root / "linked.safetensors"
    assert resolve_inside("linkdir/secret.txt", [root], "LoRA") == root / "linkdir" / "secret.txt"


def test_root_that_is_a_link(tree, tmp_path):
    root, _ = tree
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    # configured as the link, file given by its real path (and the other way round)
    assert resolve_inside(root / "a.safetensors", [alias], "LoRA") == root / "a.safetensors"
    assert resolve_inside(alias / "a.safetensors", [root], "LoRA") == alias / "a.safetensors"


def test_bad_inputs_one_line(tree):
    root, _ = tree
    _refused("", [root], "not a valid path")
    _refused("a\0b", [root], "not a valid path")
    _refused(root / "a.safetensors", [], "no folder is configured")
    msg = _refused("/etc/x\ninjected", [root])
    assert "injected" in msg  # shown, but on the same line
    with pytest.raises(LoraStudioError):
        resolve_inside(None, [root], "LoRA")


# ---- read_small_text: text files offered by the user (presets, auth) ----------------------------------------

from lib_lora.fileio import read_small_text  # noqa: E402


def test_read_small_text(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes("\ufeffa:1\n".encode())
    assert read_small_text(p, "presets file") == "a:1\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFO")
def test_fifo_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(LoraStudioError, match="not a regular file"):
        read_small_text(fifo, "presets file")


def test_folder_missing_big_binary_refused(tmp_path):
    with pytest.raises(LoraStudioError, match="is a folder"):
        read_small_text(tmp_path, "presets file")
    with pytest.raises(LoraStudioError, match="does not exist"):
        read_small_text(tmp_path / "nope", "presets file")
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 2000)
    with pytest.raises(LoraStudioError, match="limit"):
        read_small_text(big, "presets file", max_bytes=1000)
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"topsecretline:x:\xff\xfe")
    with pytest.raises(LoraStudioError) as exc:
        read_small_text(binary, "presets file")
    assert "topsecretline" not in str(exc.value)
