"""Deploy-form parameter and MAC counts against the paper and the RepVGG/RMNet READMEs (±0.5%).

Models are built on the meta device: shapes only, so even RMNet-152 converts in a second.
"""
import pytest
import torch

import models
import rm
from models.complexity import count_macs, count_params

# name: (deploy M params or None, deploy GMACs or None, training GMACs or None), ImageNet head.
PAPER = {
    "rmnet41x5_16": (23.98, 3.79, None), "rmnet50x5_32": (39.57, 6.88, None),
    "rmnet50x6_32": (47.58, 8.26, None), "rmnet101x6_16": (59.45, 11.11, None),
    "rmnet152x6_32": (126.92, 25.32, None),
    "repvgg_a0": (8.31, None, None), "repvgg_a1": (12.79, None, None), "repvgg_a2": (25.50, None, None),
    "repvgg_b0": (14.34, None, None), "repvgg_b1": (51.83, 11.82, None), "repvgg_b1g2": (41.36, None, None),
    "repvgg_b1g4": (36.12, None, None), "repvgg_b2": (80.32, None, None), "repvgg_b2g4": (55.78, None, None),
    "repvgg_b3": (110.96, 26.21, None), "repvgg_b3g4": (75.63, None, None),
    "repvgg21": (None, 2.16, 2.41), "repvgg37": (None, 4.01, 4.47), "repvgg69": (None, 7.72, 8.59),
    "repvgg133": (None, 15.12, 16.83),
    "rmrepvgg21": (None, 2.16, 2.15), "rmrepvgg37": (None, 4.01, 3.95), "rmrepvgg69": (None, 7.72, 6.53),
    "rmrepvgg133": (None, 15.12, 10.65),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_deploy_counts_match_paper(name):
    params, macs, train_macs = PAPER[name]
    with torch.device("meta"):
        model = models.create_model(name).eval()
    plain = rm.convert(model)
    if params is not None:
        assert count_params(plain) / 1e6 == pytest.approx(params, rel=5e-3)
    if macs is not None:
        assert count_macs(plain, 224) / 1e9 == pytest.approx(macs, rel=5e-3)
    if train_macs is not None:
        assert count_macs(model, 224) / 1e9 == pytest.approx(train_macs, rel=5e-3)


def test_rmnet26_cifar_forms():
    """Issue figures: training form 8.91 M / 0.47 G, deploy form 12.05 M / 0.65 G (10 classes)."""
    with torch.device("meta"):
        model = models.create_model("rmnet26x3_32", num_classes=10, stem="cifar").eval()
    plain = rm.convert(model)
    assert count_params(model) / 1e6 == pytest.approx(8.91, rel=5e-3)
    assert count_macs(model, 32) / 1e9 == pytest.approx(0.47, rel=5e-3)
    assert count_params(plain) / 1e6 == pytest.approx(12.05, rel=5e-3)
    assert count_macs(plain, 32) / 1e9 == pytest.approx(0.65, abs=5e-3)  # printed to 2 digits
