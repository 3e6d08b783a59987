"""Which timm CNNs `rm.convert` turns into exact plain chains: the fixed sweep of `NAMES`, shared by
tests/test_timm_sweep.py, and `python -m bench.timm_coverage`, which writes docs/timm_coverage.md.

Each name is first converted on the meta device (shape only: the structure decides whether it converts).
A refusal must be a one-line `rm.ConversionError` and the name must match a pattern of `REFUSABLE`; a name
that converts is built again with real weights in float64 (narrow widths where timm's constructor takes
them, randomised BatchNorm statistics), converted, checked plain (`check_plain`) and compared on random
input: relative error above 1e-10 or any other exception fails. A `REFUSABLE` pattern only allows a
refusal: when a converter for the family lands, those names convert and the table says so.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from dataclasses import dataclass

import timm
import torch
import torch.fx
import torch.nn as nn
from timm.utils.model import reparameterize_model

import rm
from rm.deploy import InputSizeCheck
from rm.verify import randomize_bn

# Fixed, so that the table compares like with like over time. timm's ResNet-like families (every
# variant of timm 1.0), RegNet, ResNetV2, ByobNet (RepVGG, GENet, the *ts/*q ResNets, CLIP ResNets),
# Res2Net, SE-ResNet (legacy), DLA, and families that do not fit (SelectiveKernel, ResNeSt, CSP,
# MobileNetV2, EfficientNet). Left out: non-narrowable models over ~90M parameters (regnety_320 and up,
# regnetx_320, repvgg_b3, repvgg_d2se, resnest101e and up, the x16/x64 CLIP ResNets): float64 copies of
# them do not fit a shared CI machine once their family converts.
NAMES = tuple("""
resnet10t resnet14t resnet18 resnet18d resnet26 resnet26d resnet26t resnet32ts resnet33ts resnet34 resnet34d
resnet50 resnet50_clip resnet50_clip_gap resnet50_gn resnet50_mlp resnet50c resnet50d resnet50s resnet50t
resnet50x4_clip_gap resnet51q resnet61q resnet101 resnet101_clip resnet101_clip_gap resnet101c resnet101d
resnet101s resnet152 resnet152c resnet152d resnet152s resnet200 resnet200d resnetaa34d resnetaa50 resnetaa50d
resnetaa101d resnetblur18 resnetblur50 resnetblur50d resnetblur101d resnetrs50 resnetrs101 resnetrs152
resnetrs200 resnetrs270 resnetrs350 resnetrs420 resnetv2_18 resnetv2_18d resnetv2_34 resnetv2_34d resnetv2_50
resnetv2_50d resnetv2_50d_evos resnetv2_50d_frn resnetv2_50d_gn resnetv2_50t resnetv2_50x1_bit
resnetv2_50x3_bit resnetv2_101 resnetv2_101d resnetv2_101x1_bit resnetv2_101x3_bit resnetv2_152 resnetv2_152d
resnetv2_152x2_bit resnetv2_152x4_bit resnext26ts resnext50_32x4d resnext50d_32x4d resnext101_32x4d
resnext101_32x8d resnext101_32x16d resnext101_32x32d resnext101_64x4d seresnet18 seresnet33ts seresnet34
seresnet50 seresnet50t seresnet101 seresnet152 seresnet152d seresnet200d seresnet269d seresnetaa50d
seresnext26d_32x4d seresnext26t_32x4d seresnext26ts seresnext50_32x4d seresnext101_32x4d seresnext101_32x8d
seresnext101_64x4d seresnext101d_32x8d seresnextaa101d_32x8d seresnextaa201d_32x8d ecaresnet26t ecaresnet50d
ecaresnet50d_pruned ecaresnet50t ecaresnet101d ecaresnet101d_pruned ecaresnet200d ecaresnet269d ecaresnetlight
wide_resnet50_2 wide_resnet101_2 legacy_seresnet18 legacy_seresnet34 legacy_seresnet50 legacy_seresnet101
legacy_seresnet152 res2net50_14w_8s res2net50_26w_4s res2net50_26w_6s res2net50_26w_8s res2net50_48w_2s
res2net50d res2net101_26w_4s res2net101d res2next50 resnest14d resnest26d resnest50d resnest50d_1s4x24d
resnest50d_4s2x40d skresnet18 skresnet34 skresnet50 skresnet50d skresnext50_32x4d regnetx_002 regnetx_004
regnetx_004_tv regnetx_006 regnetx_008 regnetx_016 regnetx_032 regnetx_040 regnetx_064 regnetx_080 regnetx_120
regnetx_160 regnety_002 regnety_004 regnety_006 regnety_008 regnety_008_tv regnety_016 regnety_032 regnety_040
regnety_040_sgn regnety_064 regnety_080 regnety_080_tv regnety_120 regnety_160 regnetz_005 regnetz_040
regnetz_040_h regnetz_b16 regnetz_b16_evos regnetz_c16 regnetz_c16_evos regnetz_d8 regnetz_d8_evos regnetz_d32
regnetz_e8 regnetv_040 regnetv_064 repvgg_a0 repvgg_a1 repvgg_a2 repvgg_b0 repvgg_b1 repvgg_b1g4 repvgg_b2
repvgg_b2g4 repvgg_b3g4 gernet_l gernet_m gernet_s dla34 dla46_c dla46x_c dla60 dla60_res2net dla60_res2next
dla60x dla60x_c dla102 dla102x dla102x2 dla169 cspresnet50 cspresnet50d cspresnet50w mobilenetv2_035
mobilenetv2_050 mobilenetv2_100 efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3
""".split())

# The names that may be refused: (pattern, fits, why), first match wins. `fits`: the blocks fit the RM
# pattern (below), so a refusal is a missing converter, not a limit of the method.
FITS_RULE = ("a name fits when every residual merge is an `add` of a branch of conv/BatchNorm(running "
             "statistics)/ReLU chains (SE or ECA gates with a sigmoid allowed, channel split and concat "
             "inside one branch allowed, an average pool whose window is its stride allowed anywhere in the branch) "
             "and a shortcut that is an identity, a 1x1 conv + BN or an average pool then a 1x1 conv + BN; every "
             "activation the reserved channels pass is ReLU (or an identity, re-parameterised or PReLU "
             "slope 1). Everything else does not fit: other activations, other normalisations, other "
             "anti-aliasing filters (blur pools) on one path only, softmax attention, concatenation across depths")
REFUSABLE: tuple[tuple[str, bool, str], ...] = (
    ("resnet50_gn", False, "GroupNorm"),
    ("resnetv2_*_gn", False, "GroupNorm"),
    ("resnetv2_*_bit", False, "GroupNorm and weight-standardised convs (BiT)"),
    ("regnety_040_sgn", False, "GroupNorm and SiLU"),
    ("resnetv2_*_evos", False, "EvoNorm"),
    ("resnetv2_*_frn", False, "FilterResponseNorm"),
    ("regnetz_*_evos", False, "EvoNorm"),
    ("resnetblur*", False, "blur pool: reflection padding and a filter on the branch only"),
    ("resnet*_clip", False, "attention-pool head (softmax attention)"),
    ("resnet3[23]ts", False, "SiLU"),
    ("resnet[56]1q", False, "SiLU"),
    ("resnext26ts", False, "SiLU"),
    ("seresnet33ts", False, "SiLU"),
    ("seresnext26ts", False, "SiLU"),
    ("regnetz_*", False, "SiLU"),
    ("regnetv_*", False, "SiLU"),
    ("efficientnet_*", False, "SiLU"),
    ("mobilenetv2_*", False, "ReLU6 (and linear bottlenecks)"),
    ("cspresnet*", False, "LeakyReLU and cross-stage concatenation"),
    ("skresnet*", False, "SelectiveKernel: softmax attention between branches"),
    ("skresnext*", False, "SelectiveKernel: softmax attention between branches"),
    ("resnest*", False, "split attention (softmax across radix groups)"),
    ("dla*", False, "tree aggregation: concatenation across depths"),
    ("res2ne*", True, "Res2Net (split/concat inside the branch): no converter"),
)
# timm constructors that take narrow widths (timm.models.resnet.ResNet and the families built on it).
NARROW = {"channels": (16, 32, 64, 128), "stem_width": 8}
NARROW_MODULES = ("resnet", "res2net", "resnest", "sknet")
INPUT_SIZE, TOLERANCE = 32, 1e-10
PLAIN_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.PReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, rm.SqueezeExcite, InputSizeCheck, nn.Dropout,
                 nn.Identity)


@dataclass(frozen=True)
class Result:
    name: str
    family: str          # timm's model module
    converted: bool
    fits: bool
    detail: str          # the relative error, or the refusal
    seconds: float


def family(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def refusable(name: str) -> tuple[bool, str] | None:
    """(fits, why) of the first `REFUSABLE` pattern `name` matches; None: it must convert."""
    return next(((fits, why) for pattern, fits, why in REFUSABLE if fnmatch.fnmatchcase(name, pattern)), None)


def build(name: str, device: str = "cpu") -> nn.Module:
    """The timm model, 10 classes, narrow where its constructor allows, in eval mode."""
    narrow = NARROW if family(name) in NARROW_MODULES else {}
    with torch.device(device):
        try:
            return timm.create_model(name, pretrained=False, num_classes=10, **narrow).eval()
        except ValueError:   # a width rule the narrow widths break (GroupNorm's 32 groups): full widths
            return timm.create_model(name, pretrained=False, num_classes=10).eval()


def reparameterized(model: nn.Module) -> nn.Module:
    """A copy with timm's multi-branch training blocks (RepVGG, ...) fused, what a user converts: on the
    model's device (it makes new tensors), in eval mode (its new convs come in training mode)."""
    with torch.device(next(model.parameters()).device):
        return reparameterize_model(model).eval()


class _PlainTracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, PLAIN_MODULES) or super().is_leaf_module(module, qualname)


def check_plain(plain: nn.Module) -> None:
    """Raise AssertionError unless `plain` is a chain: its traced graph calls only plain-chain modules
    (no add, cat or other function between them), in order."""
    graph = _PlainTracer().trace(plain)
    bad = [n.format_node() for n in graph.nodes if n.op not in ("placeholder", "output", "call_module")]
    bad += [n.target for n in graph.nodes if n.op == "call_module" and not isinstance(
        plain.get_submodule(n.target), PLAIN_MODULES)]
    nodes = list(graph.nodes)
    bad += [f"{n.name} does not take {p.name} alone" for p, n in zip(nodes, nodes[1:]) if n.args != (p,)]
    assert not bad, f"not a plain chain: {bad[:3]}"


def sweep_one(name: str) -> Result:
    """Convert or refuse `name`; raises AssertionError on a wrong answer or an unexpected refusal."""
    start, allowed = time.perf_counter(), refusable(name)
    fits = allowed is None or allowed[0]
    try:
        rm.convert(reparameterized(build(name, "meta")))   # shape only: the structure decides
    except rm.ConversionError as e:
        assert allowed is not None, f"{name} is refused, but its family converts: {e}"
        assert str(e) and "\n" not in str(e), f"{name}: the refusal is not one line: {e!r}"
        return Result(name, family(name), False, fits, str(e), time.perf_counter() - start)
    torch.manual_seed(0)
    # Deep nets with BN scales up to 1.5 amplify float64 rounding past 1e-10; half the scale keeps them
    # well conditioned.
    model = randomize_bn(build(name).to(torch.float64), 1, gamma_scale=0.5)
    plain = rm.convert(reparameterized(model))   # checked against `model` itself
    check_plain(plain)
    error = rm.verify(model, plain, INPUT_SIZE, dtypes=(torch.float64,))["float64"]["max_rel"]
    assert error <= TOLERANCE, f"{name}: relative error {error:.2e} above {TOLERANCE:g}"
    return Result(name, family(name), True, fits, f"{error:.1e}", time.perf_counter() - start)


def _short(refusal: str) -> str:
    """The refusal without the module path and the advice: what the table shows."""
    text = refusal.split(" of type ", 1)[-1]
    return text.split("; register one with")[0].replace("|", "/")


def markdown(results: list[Result], seconds: float, cpu_seconds: float) -> str:
    """docs/timm_coverage.md: per family converted / refused / why, and the fraction over the names that fit."""
    fitting = [r for r in results if r.fits]
    converted = sum(r.converted for r in fitting)
    lines = ["# timm coverage of `rm.convert`", "",
             f"Generated by `python -m bench.timm_coverage` (timm {timm.__version__}, torch {torch.__version__}) "
             f"over the {len(results)} fixed names of `bench.timm_coverage.NAMES` on one thread: {cpu_seconds:.0f} s CPU "
             f"time ({seconds:.0f} s wall on a shared machine). Each name converts (float64, randomised BatchNorm statistics, {INPUT_SIZE}x{INPUT_SIZE} "
             f"input, relative error <= {TOLERANCE:g}, plain-chain check) or is refused with a one-line "
             f"`rm.ConversionError`; the test `tests/test_timm_sweep.py` checks the same.", "",
             f"**Fits the pattern:** {FITS_RULE}.", "",
             f"**Converted: {converted} of the {len(fitting)} names that fit ({100 * converted / max(len(fitting), 1):.0f}%)**"
             f"; {len(results) - len(fitting)} names do not fit and are refused.", "",
             "| family (timm module) | names | converted | refused, fits | refused, does not fit |",
             "| --- | --- | --- | --- | --- |"]
    for fam in sorted({r.family for r in results}):
        rows = [r for r in results if r.family == fam]
        lines.append(f"| {fam} | {len(rows)} | {sum(r.converted for r in rows)} | "
                     f"{sum(r.fits and not r.converted for r in rows)} | {sum(not r.fits for r in rows)} |")
    lines += ["", "## Refused, by reason", "", "| pattern | fits | why | names | the refusal (first name) |",
              "| --- | --- | --- | --- | --- |"]
    for pattern, fits, why in REFUSABLE:
        rows = [r for r in results if not r.converted and fnmatch.fnmatchcase(r.name, pattern)
                and refusable(r.name) == (fits, why)]
        if rows:
            lines.append(f"| `{pattern}` | {'yes' if fits else 'no'} | {why} | {' '.join(r.name for r in rows)} | "
                         f"{_short(rows[0].detail)} |")
    stale = [r.name for r in results if r.converted and refusable(r.name) is not None]
    lines += ["", "## Converted", "", "| family | names (float64 relative error) |", "| --- | --- |"]
    for fam in sorted({r.family for r in results if r.converted}):
        lines.append(f"| {fam} | {' '.join(f'{r.name} ({r.detail})' for r in results if r.converted and r.family == fam)} |")
    if stale:
        lines += ["", f"Converted although `REFUSABLE` allows a refusal (drop their patterns): {' '.join(stale)}"]
    return "\n".join(lines) + "\n"


# The guide shows the summary and the per-family table; the generator keeps its copy current.
GUIDE, TABLE = "docs/bring-your-own-model.md", "docs/timm_coverage.md"
BEGIN, END = "<!-- the timm coverage summary: written by python -m bench.timm_coverage -->", "<!-- end of the summary -->"


def summary(table: str) -> str:
    """The fraction line and the per-family table of a coverage file."""
    return table[table.index("**Converted:"):table.index("\n## Refused")].strip()


def with_summary(guide: str, table: str) -> str:
    """`guide` with the text between its markers replaced by the summary of `table`."""
    head, rest = guide.split(BEGIN + "\n", 1)
    return f"{head}{BEGIN}\n{summary(table)}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timm_coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/timm_coverage.md", help="Markdown file to write")
    parser.add_argument("--names", nargs="+", default=list(NAMES), help="a subset of NAMES (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        print(f"error: not in bench.timm_coverage.NAMES: {' '.join(unknown)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start, cpu, results = time.perf_counter(), time.process_time(), []
    for name in args.names:
        results.append(sweep_one(name))
        r = results[-1]
        print(f"{r.seconds:6.1f} s  {name:24s} {'converts ' + r.detail if r.converted else _short(r.detail)}",
              flush=True)
    with rm.atomic_path(args.out) as tmp, open(tmp, "w") as f:
        f.write(text := markdown(results, time.perf_counter() - start, time.process_time() - cpu))
    print(f"wrote {args.out}")
    if args.out == TABLE:   # the committed table: the guide's copy follows it
        with open(GUIDE) as f:
            guide = with_summary(f.read(), text)
        with rm.atomic_path(GUIDE) as tmp, open(tmp, "w") as f:
            f.write(guide)
        print(f"updated the summary in {GUIDE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
