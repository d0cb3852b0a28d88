"""Provenance (study/report/provenance.py): the source hash it records covers every module of the
package, wings included; and the processors that trained an experiment, named from each epoch's report
(results differ between processors in their last bits, which training at learning rate 1 grows)."""

import shutil
from pathlib import Path

import pandas as pd

import study
from study import metrics as m
from study.report.collect import Experiment
from study.report.provenance import UNRECORDED_MACHINE, machines, source_hash, trained_by

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


def epochs(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{m.EPOCH: i + 1, m.SHARED_PREFIX: False} | row for i, row in enumerate(rows)])


def test_each_processor_counts_the_epochs_it_trained():
    table = epochs(
        [
            {m.CPU: "AMD EPYC 9R14"},
            {m.CPU: "AMD EPYC 9R14"},
            {m.CPU: "AMD EPYC 9R14", m.SHARED_PREFIX: True},  # taken from a prefix another trial trained
            {m.CPU: "Intel(R) Xeon(R) Platinum 8488C", m.GPU: "NVIDIA H200"},  # a GPU's name wins
            {m.CPU: "Intel(R) Xeon(R) Platinum 8488C"},
            {m.CPU: None},  # a report from before the record (a resumed old sweep)
        ]
    )
    assert machines(table) == {
        "AMD EPYC 9R14": 2,
        "NVIDIA H200": 1,
        "Intel(R) Xeon(R) Platinum 8488C": 1,
        UNRECORDED_MACHINE: 1,
    }


def test_the_summary_line_names_the_commit_and_the_processors():
    def line(study: dict, table: pd.DataFrame) -> str:
        return trained_by(Experiment(None, pd.DataFrame(), table, study, [], {}))

    study = {"git_commit": "bed0402e4076f0485d9859bb10d21276e75b52b6", "versions": {"study": "0.2.0", "ray": "2.60.0"}}
    assert line(study, epochs([{m.CPU: "AMD EPYC"}] * 3)) == (
        "commit `bed0402e4076` (study 0.2.0, ray 2.60.0): 3 epochs on AMD EPYC"
    )
    old = epochs([{"valid_ppl": 100.0}] * 2)  # a sweep whose code recorded no processor
    assert line({}, old) == "code: 2 epochs on a processor its code did not record"
    assert line(study | {"git_dirty": True}, old.iloc[:0]).startswith("commit `bed0402e4076` with uncommitted changes")
    assert line({}, old.iloc[:0]).endswith("no epoch trained yet")
