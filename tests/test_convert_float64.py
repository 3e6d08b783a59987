"""convert.py's float64 check is optional for large models (`verify_float64`: true, false, auto)."""
import pytest

import artifacts
from jobs import convert as convert_job
from tests.helpers import run_script

SMALL = ["model=resnet20", "stem=cifar", "num_classes=10", "model.kwargs.widths=[8,8,8]"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small models on shared cores: one thread is many times faster than two."""


def _convert(tmp_path, *argv: str) -> tuple[int, str, str, dict]:
    out = tmp_path / "plain.pt"
    code, text, err = run_script("convert", [*SMALL, f"out={out}", *argv])
    return code, text, err, artifacts.load(out).meta["verify"] if code == 0 else {}


def test_small_models_keep_the_float64_check_by_default(tmp_path):
    code, text, err, report = _convert(tmp_path)
    assert code == 0, err
    assert set(report) == {"float64", "float32"} and report["float64"]["max_rel"] < 1e-10
    assert "not checked" not in text


@pytest.mark.parametrize("setting, why", [("verify_float64=false", "verify_float64=false"),
                                          ("verify_float64=auto", "over 0 M parameters")])
def test_large_models_or_the_flag_leave_it_out(tmp_path, monkeypatch, setting, why):
    monkeypatch.setattr(convert_job, "LARGE_PARAMS", 1000)   # the tiny model counts as large
    code, text, err, report = _convert(tmp_path, setting)
    assert code == 0, err
    assert set(report) == {"float32"} and report["float32"]["max_rel"] < 1e-5
    assert f"float64  not checked ({why}; verify_float64=true checks it)" in text


def test_forced_on_for_a_large_model_and_a_bad_value_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_job, "LARGE_PARAMS", 1000)
    assert set(_convert(tmp_path, "verify_float64=true")[3]) == {"float64", "float32"}
    code, _, err, _ = _convert(tmp_path, "verify_float64=maybe")
    assert code == 2 and err.strip() == "error: verify_float64 must be true, false or auto, got 'maybe'"
