"""The source hash that provenance records covers every module of the package, wings included."""

import shutil
from pathlib import Path

import study
from study.report.provenance import source_hash

ROOT = Path(study.__file__).resolve().parent.parent


def copy_of_sources(tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "study", copy / "study", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "search_spaces", copy / "search_spaces")
    return copy


def test_the_hash_is_the_same_for_the_same_sources(tmp_path):
    assert source_hash(copy_of_sources(tmp_path)) == source_hash()


def test_a_change_in_any_wing_or_the_core_or_a_space_changes_the_hash(tmp_path):
    copy = copy_of_sources(tmp_path)
    before = source_hash(copy)
    hashes = {before}
    for changed in (
        "study/train/trainer.py",
        "study/sweep/tuner.py",
        "study/report/summary.py",
        "study/config.py",
        "search_spaces/grad_clip.yaml",
    ):
        with (copy / changed).open("a") as file:
            file.write("\n# changed\n")
        hashes.add(source_hash(copy))
    assert len(hashes) == 6  # every change made a new hash


def test_files_beside_the_sources_do_not_change_the_hash(tmp_path):
    copy = copy_of_sources(tmp_path)
    before = source_hash(copy)
    (copy / "README.md").write_text("notes")
    (copy / "study" / "train" / "notes.txt").write_text("not code")
    assert source_hash(copy) == before
