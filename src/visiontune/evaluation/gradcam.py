"""Grad-CAM (Selvaraju et al., 2017): where in the image the model found the evidence for a class.

The backbone's last feature map A (B, C, h, w) is captured by a forward hook; the gradient of the
class's logit with respect to it, averaged over the map, weighs each channel; the heat map is
ReLU(sum_c w_c A_c), upsampled to the input size and stretched to 0..1 per image.

It needs the logit to be a differentiable function of the feature map: true for fine-tuned heads
and for the fitted linear, MLP and RBF-SVM heads; not for k-NN (a vote among neighbours) or a
random forest (threshold tests), which `unavailable_reason` says in words. An ensemble's map is
the mean of its members' maps (each for the ensemble's class, each stretched to 0..1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from visiontune.errors import ModelError
from visiontune.models.classifier import Classifier, as_feature_map
from visiontune.models.ensemble import Ensemble, members_of

# fitted heads whose output is a vote or a tree walk: the gradient is zero or says nothing
NOT_DIFFERENTIABLE = {
    "knn": "a k-NN head votes among the nearest training images; its output has no useful gradient",
    "forest": "a random forest head makes threshold tests; its output has no gradient",
}


def unavailable_reason(model: Classifier | Ensemble) -> str | None:
    """None when Grad-CAM applies to `model`, otherwise why it doesn't (shown in the report)."""
    fitted = getattr(getattr(model, "head", None), "fitted", None)  # a features-method bundle's classical head
    kind = getattr(fitted, "kind", None)
    if kind in NOT_DIFFERENTIABLE:
        return f"Grad-CAM does not apply to this model: {NOT_DIFFERENTIABLE[kind]}."
    return None


def grad_cam(model: Classifier | Ensemble, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) heat maps in 0..1 for (B, 3, H, W) normalised images, each for its class in (B,) `classes`.

    Works on models whose parameters are frozen (the input is made to require grad instead), and
    on feature bundles that average an image with its mirror: the mirror's map is flipped back.

    Example:
        >>> maps = grad_cam(model, images, logits.argmax(1))  # doctest: +SKIP
        >>> maps.shape  # (B, H, W)  # doctest: +SKIP
    """
    reason = unavailable_reason(model)
    if reason is not None:
        raise ModelError(reason)
    parts = members_of(model)  # an ensemble: each member's map for the ensemble's class, averaged
    captured: list[list[torch.Tensor]] = [[] for _ in parts]
    pairs = zip(parts, captured, strict=True)
    handles = [member.backbone.register_forward_hook(_recorder(bucket)) for member, bucket in pairs]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # builds the graph even when all weights are frozen
            logits = model(x)  # (B, K)
            chosen = logits.gather(1, classes.to(logits.device).long()[:, None]).sum()  # images are independent
            grads = iter(torch.autograd.grad(chosen, [a for bucket in captured for a in bucket]))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    maps = []
    for member, bucket in zip(parts, captured, strict=True):
        cams = torch.cat([_cam(member, a.detach(), next(grads)) for a in bucket])  # (B * views, h, w)
        maps.append(_upsample(_merge_views(cams, len(images)), images.shape[-2:]))
    return torch.stack(maps).mean(dim=0)


def _recorder(bucket: list[torch.Tensor]) -> Any:
    return lambda _module, _inputs, output: bucket.append(output)


def _cam(model: Classifier, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature map and its gradient -> (B, h, w) class activation map."""
    prefix = getattr(model.backbone, "num_prefix_tokens", 0)
    a = as_feature_map(activations, model.num_features, prefix).float()
    g = as_feature_map(grads, model.num_features, prefix).float()
    weights = g.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): each channel's importance for the class
    return F.relu((weights * a).sum(dim=1))


def _merge_views(cams: torch.Tensor, batch: int) -> torch.Tensor:
    """Sum an image's map with its mirror's (flipped back) when the model embedded both (feature TTA)."""
    if len(cams) == batch:
        return cams
    assert len(cams) == 2 * batch, (len(cams), batch)  # FeatureClassifier with tta: [images, mirrored images]
    plain, mirrored = cams.chunk(2)
    return plain + mirrored.flip(-1)


def _upsample(cams: torch.Tensor, size: Any) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), each map stretched to 0..1 (min-max: a few-cell map keeps its contrast)."""
    maps = F.interpolate(cams[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = maps.flatten(1).amin(dim=1)[:, None, None]
    span = (maps.flatten(1).amax(dim=1)[:, None, None] - low).clamp_min(1e-12)
    return ((maps - low) / span).clamp(0, 1).cpu()
