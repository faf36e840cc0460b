"""A plain clone tests itself: the fixtures live in the repository, not in a folder beside it."""

from pathlib import Path

from tests import paths


def test_fixtures_are_inside_the_repository():
    repo = Path(__file__).resolve().parent.parent
    fixtures = Path(paths.FIXTURES).resolve()
    if "LORA_STUDIO_FIXTURES" not in __import__("os").environ:
        assert repo in fixtures.parents
    for name in ("sd15_checkpoint_compvis.json", "sd15_unet_diffusers.json", "sdxl_checkpoint_compvis.json",
                 "sdxl_unet_diffusers.json", "clip-l-offline/config.json", "clip-l-offline/vocab.json"):
        assert (fixtures / name).is_file(), name


def test_no_code_points_outside_the_repository():
    repo = Path(__file__).resolve().parent.parent
    hits = [str(p.relative_to(repo)) for folder in ("lib_lora", "lora_studio_webui", "tests", "bench")
            for p in (repo / folder).rglob("*.py")
            if "/work/shared" in p.read_text(encoding="utf-8") and p.name != "test_fixtures_in_repo.py"]
    assert hits == []
