"""docs/FIDELITY.md is generated from the composed recipes and current; every difference from the
paper or the authors' code carries a reason; the seeds summary averages a real seeds sweep."""
import json
import os

import pytest

from paper import fidelity, seeds
from paper.fidelity_sources import NO_SOURCE, Group, Setting
from tests.helpers import TINY, run_script


@pytest.fixture(scope="module")
def rendered():
    return fidelity.render()


def test_fidelity_table_is_current(rendered):
    text, _ = rendered
    with open(fidelity.DOC) as f:
        assert f.read() == text, "docs/FIDELITY.md is stale: run `python -m paper.fidelity`"


def test_every_difference_has_a_reason(rendered):
    assert rendered[1] == []


def test_table_covers_every_paper_result(rendered):
    text, _ = rendered
    for title in ("Table 1, CIFAR-10", "Table 1, CIFAR-100", "Table 1, ImageNet", "Table 2", "Table 3",
                  "Figure 5, CIFAR-10", "Figure 6", "RM+AMC", "ResRep, ResNet-56", "ResRep, ResNet-50",
                  "300-epoch"):
        assert f"## {title}" in text or title in text, title


def _group(ref, reason=""):
    return Group("t", (("experiment=table1_rmnet26x3_32_cifar10",),), "s",
                 (Setting("epochs", ("epochs",), "p", "a", ref, reason),))


@pytest.mark.parametrize("ref,reason,status,problem", [
    (120, "", "match", False),
    (200, "", "**differs, no reason stated**", True),
    (200, "why", "why", False),
    (120, "why", "match", True),           # a reason for a value that matches is stale
    (NO_SOURCE, "choice", "no source fixes it: choice", False),
])
def test_checker_flags_unexplained_and_stale_reasons(ref, reason, status, problem):
    lines, problems = fidelity.render_group(_group(ref, reason))
    row = next(ln for ln in lines if ln.startswith("| epochs"))
    assert row.endswith(f"| 120 | {status} |")
    assert bool(problems) == problem


def test_check_mode_fails_on_a_stale_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fidelity, "DOC", str(tmp_path / "FIDELITY.md"))
    monkeypatch.setattr(fidelity, "GROUPS", (_group(120),))
    assert fidelity.main(["--check"]) == 1
    assert fidelity.main([]) == 0 and fidelity.main(["--check"]) == 0


def test_seeds_sweep_prints_mean_and_std(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_script("train", ["-m", *TINY, "epochs=1", "max_steps_per_epoch=2", f"output_dir={out}",
                                        "seed=0,1", "run_name=tiny_s${seed}"])
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["tiny_s0", "tiny_s1"]
    top1 = [json.load(open(out / r / "final.json"))["residual"]["top1"] for r in ("tiny_s0", "tiny_s1")]
    assert seeds.main([str(out)]) == 0
    line = capsys.readouterr().out.strip()
    mean, std = sum(top1) / 2, abs(top1[0] - top1[1]) / 2 ** 0.5
    assert line.startswith("resnet18 on synthetic, seeds 0, 1: ") and f"residual {mean:.2f} ± {std:.2f}" in line


def test_seeds_rejects_a_folder_without_runs(tmp_path, capsys):
    assert seeds.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no finished run")
