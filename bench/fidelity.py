"""Top-1 fidelity of a lossy runtime or precision: its validation top-1 and how often its top-1 class
agrees with the float32 eager model's, image by image."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


@torch.inference_mode()
def predictions(run: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
                prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 class, target) of every image `loader` yields; `prepare` moves and casts a batch for `run`."""
    classes, targets = [], []
    for batch in loader:
        if batch is None:   # a batch of undecodable images only (data.bad_images=skip)
            continue
        images, target = batch
        classes.append(run(prepare(images)).float().argmax(1).cpu())
        targets.append(target)
    return torch.cat(classes), torch.cat(targets)


def compare(reference: tuple[torch.Tensor, torch.Tensor], candidate: torch.Tensor) -> dict[str, float]:
    """Top-1 (%) of `candidate` predictions and of the `reference` (predictions, targets), their
    difference and the agreement (%) of the two predictions."""
    ref, targets = reference
    top1 = 100.0 * (candidate == targets).double().mean().item()
    top1_ref = 100.0 * (ref == targets).double().mean().item()
    return {"top1": top1, "top1_reference": top1_ref, "delta": top1 - top1_ref,
            "agreement": 100.0 * (candidate == ref).double().mean().item(), "images": len(targets)}
