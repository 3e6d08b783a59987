"""The per-layer latency table (bench/latency.py) against a fake timer, so every number is known:
each layer signature is measured once, the cache file round-trips, the sum is the sum of the layers
of the deployed model (BN folded, Conv+ReLU one layer, a residual model's additions counted), and
the real runtimes run one layer end to end."""
import json

import pytest
import torch.nn as nn

import models
import rm
from bench.latency import LatencyTable, layers
from rm.deploy import SqueezeExcite
from tests.helpers import randomize_bn

MS = {"Conv2d+relu": 1.0, "Conv2d": 0.5, "add": 0.25}   # every other layer kind: 0.125 ms


class FakeTimer:
    """Milliseconds by layer kind; records which signatures were measured and never runs a layer."""

    def __init__(self):
        self.keys = []

    def __call__(self, run, layer):
        self.keys.append(layer.key)
        return MS.get(layer.kind, 0.125)


def _resnet():
    return randomize_bn(models.create_model("resnet20", 10, "cifar", widths=(4, 8, 8)).eval())


def _expected(model, size):
    kinds = [layer.kind for layer in layers(model, size)]
    return sum(MS.get(kind, 0.125) for kind in kinds), kinds


def test_residual_model_sums_folded_convs_and_additions():
    model = _resnet()
    timer = FakeTimer()
    total = LatencyTable(timer=timer).model_ms(model, 16)
    expected, kinds = _expected(model, 16)
    assert total == pytest.approx(expected)
    assert kinds.count("add") == 9                    # one addition per block of resnet20
    assert kinds.count("Conv2d+relu") == 10           # stem + each block's first conv, ReLU fused
    assert not any("BatchNorm" in kind for kind in kinds)   # folded, as deployed
    assert len(timer.keys) == len(set(timer.keys)) < len(kinds)   # repeated shapes measured once


def test_plain_model_has_no_additions_and_fuses_relus():
    plain = rm.convert(_resnet())
    total = LatencyTable(timer=FakeTimer()).model_ms(plain, 16)
    expected, kinds = _expected(plain, 16)
    assert total == pytest.approx(expected)
    assert "add" not in kinds and "ReLU" not in kinds
    assert kinds.count("Conv2d+relu") == sum(isinstance(m, nn.Conv2d) for m in plain.modules())


def test_each_signature_measured_once_across_calls_and_models():
    model = _resnet()
    timer = FakeTimer()
    table = LatencyTable(timer=timer)
    first = table.model_ms(model, 16)
    measured = len(timer.keys)
    assert table.model_ms(model, 16) == first and len(timer.keys) == measured
    table.model_ms(model, 32)                          # another input size is another signature
    assert len(timer.keys) > measured
    other = LatencyTable(batch_size=2, timer=timer)    # so is another batch size
    other.model_ms(model, 16)
    assert not set(timer.keys[:measured]) & set(timer.keys[-len(other.entries):])


def test_a_layer_priced_by_its_shape_is_the_models_entry():
    """`module_ms` prices a conv(+ReLU), Linear or PReLU by its settings and input shape from the
    entry a model's layer of that shape made (a meta module: no weights needed), and a new shape is
    measured once, built with weights on the CPU."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2), nn.PReLU(6),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    timer = FakeTimer()
    table = LatencyTable(batch_size=2, timer=timer)
    table.model_ms(model, 16)
    found = {layer.name: layer for layer in layers(model, 16, batch=2)}
    measured = len(timer.keys)
    for name, relu in (("0", True), ("2", False), ("3", False), ("6", False)):
        module = model.get_submodule(name).to("meta")
        assert table.module_ms(module, (1, *found[name].shape[1:]), relu) == MS.get(found[name].kind, 0.125)
    assert len(timer.keys) == measured
    built = []
    table.timer = lambda run, layer: (built.append(layer.make()), 2.0)[1]
    assert table.module_ms(nn.Conv2d(8, 5, 3, padding=1, device="meta"), (1, 8, 16, 16), relu=True) == 2.0
    assert built[0].op.weight.device.type == "cpu" and built[0].relu and built[0].op.weight.abs().sum() > 0


def test_cache_round_trip(tmp_path):
    cache = str(tmp_path / "table.json")
    model = _resnet()
    first = LatencyTable(cache=cache, timer=FakeTimer()).model_ms(model, 16)
    assert json.load(open(cache))["schema"] == "rmnet-latency/1"

    def never(run, layer):
        raise AssertionError(f"{layer.kind} measured again")

    again = LatencyTable(cache=cache, timer=never)
    assert again.model_ms(model, 16) == first
    assert "| Conv2d+relu |" in again.to_markdown()


def test_check_compares_sum_with_whole_model():
    model = _resnet()
    table = LatencyTable(timer=lambda run, layer: 4.0 if layer.kind == "model" else 0.5)
    result = table.check(model, 16)
    assert result["sum_ms"] == pytest.approx(0.5 * len(layers(model, 16)))
    assert result["whole_ms"] == 4.0 and result["ratio"] == pytest.approx(result["sum_ms"] / 4.0)
    assert len(table.entries) == len({layer.key for layer in layers(model, 16)})   # the whole is no entry


def _se_chain():
    """A plain chain with an RM-converted SE (its gate on 4 of 8 channels: slicing, cat, sigmoid)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SqueezeExcite(8, 2, gated=4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def test_se_pieces_are_layers():
    kinds = [layer.kind for layer in layers(_se_chain(), 8)]
    assert {"Conv2d+relu", "getitem", "mean", "sigmoid", "mul", "cat", "Linear"} <= set(kinds)


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_real_runtime_times_each_layer(runtime, one_thread):
    # ONNX export costs about a second per layer: the SE chain's 12 layers in eager only
    model = _se_chain() if runtime == "eager" else nn.Sequential(*list(_se_chain())[:2], *list(_se_chain())[3:])
    table = LatencyTable(runtime=runtime, threads=1)
    result = table.check(model, 8)
    assert len(table.entries) == len({layer.key for layer in layers(model, 8, runtime=runtime)})
    assert min(e["ms"] for e in table.entries.values()) > 0 and result["whole_ms"] > 0


def test_bad_settings_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        LatencyTable(runtime="tensorrt")
    with pytest.raises(ValueError, match="batch_size"):
        LatencyTable(batch_size=0)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable(cache=str(bad))
