"""The timm sweep (`bench.timm_coverage`): every name of its fixed list converts exactly into a plain chain
or is refused in one line; a crash, a wrong answer or an unexpected refusal fails. CI runs one or two
names per family; the whole list runs under `-m slow` (and writes docs/timm_coverage.md as a generator)."""
import os

import pytest
import timm
import torch
import torch.nn as nn

import rm
from bench import timm_coverage as cov
from tests.helpers import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One or two names per family and per kind of refusal: the structures the full sweep meets.
SAMPLE = ["resnet10t", "resnet18d", "resnet26t", "seresnext26d_32x4d", "ecaresnet26t", "resnetrs50", "resnet50_gn",
          "resnetblur18", "resnetaa34d", "resnet50_clip", "resnetv2_18", "resnetv2_50x1_bit", "resnet32ts",
          "regnetx_002", "regnety_002", "regnetz_005", "repvgg_a0", "gernet_s", "res2net50_26w_4s", "legacy_seresnet18",
          "dla34", "skresnet18", "resnest14d", "cspresnet50", "mobilenetv2_050", "efficientnet_b0"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convs on a busy machine: one thread is many times faster than two."""


def test_the_list_is_fixed_large_and_in_timm():
    assert len(cov.NAMES) >= 150 and len(set(cov.NAMES)) == len(cov.NAMES)
    assert set(cov.NAMES) <= set(timm.list_models()), sorted(set(cov.NAMES) - set(timm.list_models()))
    assert set(SAMPLE) <= set(cov.NAMES)
    assert {cov.family(n) for n in SAMPLE} == {cov.family(n) for n in cov.NAMES}


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_names_convert_or_are_refused(name):
    cov.sweep_one(name)


@pytest.mark.slow
def test_every_name_converts_or_is_refused(tmp_path):
    assert cov.main(["--out", str(tmp_path / "coverage.md")]) == 0


def test_a_wrong_answer_fails_the_sweep(monkeypatch):
    convert = rm.convert

    def off_by_a_bit(model, **kw):
        plain = convert(model, **kw)
        with torch.no_grad():
            plain[-1].bias.add_(1e-6)
        return plain
    monkeypatch.setattr(rm, "convert", off_by_a_bit)
    with pytest.raises(AssertionError, match="relative error"):
        cov.sweep_one("resnet10t")


def test_an_unexpected_refusal_fails_the_sweep(monkeypatch):
    monkeypatch.setattr(cov, "REFUSABLE", ())
    with pytest.raises(AssertionError, match="resnet50_gn is refused, but its family converts"):
        cov.sweep_one("resnet50_gn")


def test_the_plainness_check_finds_an_add_or_a_foreign_module():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) + x
    with pytest.raises(AssertionError, match="add"):
        cov.check_plain(nn.Sequential(nn.Conv2d(3, 3, 1), Residual()))
    with pytest.raises(AssertionError, match="0"):
        cov.check_plain(nn.Sequential(nn.SiLU()))
    plain = rm.convert(cov.build("ecaresnet26t"))
    assert isinstance(plain[0], rm.deploy.InputSizeCheck) and any(isinstance(m, rm.SqueezeExcite) for m in plain)
    cov.check_plain(plain)   # the gates and the size check are leaves


def test_the_generator_writes_the_table_and_refuses_unknown_names(tmp_path, capsys):
    out = tmp_path / "coverage.md"
    assert cov.main(["--names", "resnet18", "resnet50_gn", "res2net50_26w_4s", "--out", str(out)]) == 0
    text = out.read_text()
    rows = {r["family (timm module)"]: r for r in markdown_table(text, "| family")}
    assert rows["resnet"]["converted"] == "1" and rows["resnet"]["refused, does not fit"] == "1"
    assert rows["res2net"]["refused, fits"] == "1"
    assert "Converted: 1 of the 2 names that fit (50%)" in text
    assert cov.main(["--names", "resnet18", "nonet", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: not in bench.timm_coverage.NAMES: nonet"



def test_the_plainness_check_finds_a_layer_that_does_not_take_the_previous_output():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = self.a(x)
            self.b(y)
            return self.c(y)
    with pytest.raises(AssertionError, match="c does not take b alone"):
        cov.check_plain(Skip())


def test_the_guide_shows_the_committed_coverage_summary():
    """The bring-your-own-model guide's copy of the fraction and the per-family table is the committed table's."""
    with open(os.path.join(ROOT, cov.TABLE)) as f:
        table = f.read()
    with open(os.path.join(ROOT, cov.GUIDE)) as f:
        guide = f.read()
    assert cov.with_summary(guide, table) == guide, f"stale: run python -m bench.timm_coverage ({cov.GUIDE})"
    assert cov.summary(table) in guide
