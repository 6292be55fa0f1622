"""Outputs must not change under a refactor: the written graphs and initializers of three
models under eight settings match fingerprints stored from the code before the pipeline
refactor (commit 2ae8f8f; tests/regression/fingerprints.json, made and compared by
tests/regression/fingerprint.py)."""

from __future__ import annotations

import json

import pytest
from regression import fingerprint as fp

STORED = json.loads(fp.STORE.read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    return folder, fp.materialize(folder)


def test_every_case_is_stored():
    assert sorted(STORED["cases"]) == sorted(c.key for c in fp.CASES)


@pytest.mark.parametrize("case", fp.CASES, ids=lambda c: c.key)
def test_output_unchanged(case, files):
    if STORED["versions"] != fp.versions():
        pytest.skip(f"fingerprints made with {STORED['versions']}, running {fp.versions()}")
    folder, models = files
    assert fp.same(fp.run_case(case, models, folder), STORED["cases"][case.key]) == []
