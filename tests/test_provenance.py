"""Which processors trained an experiment (study/report/provenance.py): its results differ between
processors in their last bits, and training at learning rate 1 grows that to tenths of a percent, so
the report names them, from the processor each epoch's report records."""

import pandas as pd

from study import metrics as m
from study.report.collect import Experiment
from study.report.provenance import UNRECORDED_MACHINE, machines, trained_by


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
