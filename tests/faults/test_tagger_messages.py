"""Messages of the tagger for folders and files that cannot be tagged: one line, naming the fix."""

from __future__ import annotations

import pytest
from PIL import Image

from lib_lora.errors import LoraStudioError
from lib_lora.tagger.pipeline import FolderJob, check_job
from lib_lora.tagger.preprocess import ImageReadError, decode, load_and_prepare


def _problem(job) -> str:
    with pytest.raises(LoraStudioError) as e:
        check_job(job)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_empty_folder_gets_no_sub_folder_hint(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    msg = _problem(FolderJob(tmp_path / "empty"))
    assert "holds no images" in msg and "recursive" not in msg and "sub-folder" not in msg


def test_images_only_in_sub_folders_name_the_option(tmp_path):
    (tmp_path / "top" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "top" / "sub" / "x.png")
    msg = _problem(FolderJob(tmp_path / "top"))
    assert "its sub-folders do" in msg and "--recursive" in msg and "Include sub-folders" in msg
    assert check_job(FolderJob(tmp_path / "top", recursive=True))      # with the option: fine


@pytest.mark.parametrize("read", [lambda p: load_and_prepare(p, 32), lambda p: decode(p, 32)])
def test_a_file_that_is_no_image_is_one_line_with_the_fix(tmp_path, read):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"<html>a saved web page, not a png</html>")
    with pytest.raises(ImageReadError) as e:
        read(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: cannot read image") and "replace or remove" in msg
    assert "UnidentifiedImageError" not in msg and msg.count("bad.png") == 1 and "\n" not in msg


def test_options_that_empty_every_caption_or_make_no_sense_are_refused():
    from lib_lora.tagger.postprocess import TagOptions
    with pytest.raises(LoraStudioError, match="max tags -3 must be 0"):
        TagOptions(max_tags=-3).validate()
    with pytest.raises(LoraStudioError, match="leave every caption empty"):
        TagOptions(general_threshold=2, character_threshold=2).validate()
    with pytest.raises(LoraStudioError, match="leave every caption empty"):
        TagOptions(general_threshold=2, include_characters=False).validate()
    # each of these still writes something: accepted
    TagOptions(general_threshold=2).validate()                                    # characters only
    TagOptions(general_threshold=2, character_threshold=2, prepend=["trigger"]).validate()
    TagOptions(general_threshold=2, character_threshold=2, rating="first").validate()
    TagOptions(general_threshold=2, character_threshold=2, general_mcut=True).validate()
