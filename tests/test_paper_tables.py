"""Static columns of the paper's tables (scripts/paper_tables.py) and the paper's FLOP rule."""
import json

import pytest
import torch
import torchvision

import models
import paper
from models.complexity import count_macs, paper_flops
from paper.printed import DEPLOY, TRAIN, Check, Row
from paper.static import DOCUMENTED, MATCH, MISMATCH, MISSING, NO_MODEL, agreement, check_row, check_rows
from scripts.paper_tables import main

# Printed values that torchvision's models reproduce to the last digit under the paper's rule.
TORCHVISION_GFLOPS = {"resnet18": 1.82, "resnet34": 3.67, "resnet50": 4.11, "resnet101": 7.83,
                      "resnet152": 11.56, "resnext50_32x4d": 4.26, "resnext101_32x8d": 16.48, "vgg16": 15.48}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GFLOPS))
def test_paper_flops_reproduce_torchvision_rows(name):
    with torch.device("meta"):
        model = getattr(torchvision.models, name)().eval()
    assert paper_flops(model, 224) / 1e9 == pytest.approx(TORCHVISION_GFLOPS[name], abs=0.006)


def test_paper_flops_counts_bn_and_relu_elements():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=True), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    macs = 4 * 3 * 9 * 8 * 8 + 4 * 8 * 8 * 5  # biases are not counted
    assert count_macs(net, 8) == macs
    assert paper_flops(net, 8) == macs + 2 * 4 * 8 * 8
    assert paper_flops(net, 8, batch=3) == paper_flops(net, 8)


@pytest.mark.parametrize("ours,printed,expected", [
    (21.28, "21.2", "0.5%"), (21.33, "21.2", ""),          # 0.6% off and not 21.2 at one decimal
    (2.164, "2.1", "printed digits"), (1.874, "1.9", "printed digits"),  # truncated / rounded
    (2.25, "2.1", ""), (138.36, "138", "0.5%"), (0.649, "0.51", ""),
])
def test_agreement_rule(ours, printed, expected):
    assert agreement(ours, printed) == expected


def test_every_row_matches_the_paper_except_documented_ones():
    """Acceptance: every row with a model agrees within 0.5% (or at the printed precision); the
    only exceptions are the documented paper inconsistencies."""
    rows = [r for rows in paper.TABLES.values() for r in rows
            if r.model is None or r.model.startswith("torchvision.") or r.model in models.list_models()]
    results = check_rows(rows, progress=False)
    assert not paper.failures(results)
    by_status = {}
    for r in results:
        by_status.setdefault(r.status, []).append(r)
    documented = {("RMNet 26x3_32", "CIFAR-10"), ("RMNet 26x3_32", "CIFAR-100"), ("RMNet 41x4_8", "ImageNet")}
    if "mobilenetv2_rm" in models.list_models():  # the paper does not give MobileNetV2's widths
        documented |= {("MobileNetV2", "CIFAR-10"), ("MobileNetV2", "CIFAR-100")}
    assert {(r.row.label, r.row.dataset) for r in by_status[DOCUMENTED]} == documented
    assert {r.row.label for r in by_status[NO_MODEL]} == {"DiracNet 34", "ResDistill 34", "ResDistill 50"}
    for r in by_status[MATCH]:
        for c in r.checks:
            assert abs(c.rel_diff) <= 5e-3 or c.criterion == "printed digits", (r.row.label, c)
    # The documented rows are what the notes claim: RMNet-26 fits no form, RMNet-41x4 only training.
    for r in by_status[DOCUMENTED]:
        fits = {form: all(agreement(_value(counts, c), c.printed) for c in r.row.checks)
                for form, counts in r.forms.items()}
        assert fits == {TRAIN: "41x4" in r.row.label, DEPLOY: False}, r.row


def _value(counts, check):
    return counts.params / 1e6 if check.column == "params" else counts.flops / {"M": 1e6, "G": 1e9}[check.unit]


def test_unexpected_mismatch_and_missing_model_are_failures():
    wrong = Row("T", "ImageNet", "ResNet 18", "resnet18", (Check("params", TRAIN, "12.5", "M"),))
    assert check_row(wrong).status == MISMATCH
    missing = Row("T", "ImageNet", "Nope", "no_such_model", (Check("params", TRAIN, "1", "M"),))
    assert check_row(missing).status == MISSING
    documented = Row("T", "ImageNet", "ResNet 18", "resnet18", (Check("params", TRAIN, "12.5", "M"),),
                     documented=True, note="known")
    assert check_row(documented).status == DOCUMENTED
    failed = paper.failures([check_row(r) for r in (wrong, missing, documented)])
    assert [r.row.label for r in failed] == ["ResNet 18", "Nope"]


def test_cli_writes_reports_and_exit_code(tmp_path, monkeypatch, capsys):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert main(["--tables", "table3", "--markdown", str(md), "--json", str(js), "--no-progress"]) == 0
    rows = json.loads(js.read_text())
    assert [r["backbone"] for r in rows] == ["ResNet 18", "RepVGG 18", "ResNet 34", "RepVGG 34"]
    assert all(r["status"] == MATCH for r in rows)
    assert rows[1]["forms"][DEPLOY]["params"] == pytest.approx(11.51e6, rel=5e-3)
    assert "| ImageNet | RepVGG 18 | `repvgg_resnet18` | deploy | 11.5 / 11.51 | 1.80 / 1.797 |" in md.read_text()

    bad = (Row("Table 3", "ImageNet", "ResNet 18", "resnet18", (Check("flops", TRAIN, "2.5"),)),)
    monkeypatch.setitem(paper.TABLES, "table3", bad)
    assert main(["--tables", "table3", "--no-progress"]) == 1
    assert "1 row(s) disagree" in capsys.readouterr().err
