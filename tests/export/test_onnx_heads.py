"""Every features head exports to ONNX with the answers it gives in PyTorch (in the quick set, with a small model).

One graph holds a small backbone and all six heads (logistic regression and the linear probe are both `linear`
modules; the MLP, the SVM's one-vs-one votes, k-NN's top-k and the forest's tree walks are each their own ops),
so one export (the slow part, a few seconds whatever the model) covers them all. `test_onnx.py` exports whole
features bundles through `export_model`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from visiontune.bundle import BundleMeta
from visiontune.data.demo import FASHION_MNIST_CLASSES
from visiontune.export.onnx import to_onnx
from visiontune.features import HEADS, fit_head
from visiontune.models import create_classifier
from visiontune.models.fitted import FeatureClassifier, embed
from visiontune.predict.onnx_backend import OnnxModel

CLASSES = (0, 1, 7)


class AllHeads(nn.Module):
    """(B, 3, H, W) -> (B, heads x K): each head's logits on one shared backbone, side by side."""

    def __init__(self, models: list[FeatureClassifier]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x) for model in self.models], dim=1)


def _images(fashion: dict, split: str, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    """Real Fashion-MNIST images as the model takes them ((B, 3, 28, 28), normalised) and labels 0..2."""
    images, labels = fashion[f"{split}_images"], fashion[f"{split}_labels"]
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in CLASSES])
    x = torch.from_numpy(images[rows]).float().div(255).sub(0.5).div(0.5)
    return x[:, None].expand(-1, 3, -1, -1).contiguous(), np.searchsorted(np.array(CLASSES), labels[rows])


def test_every_features_head_exports_with_the_same_answers(fashion: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = create_classifier("small_cnn", len(CLASSES), pretrained=False, image_size=28).eval()
    train_x, train_y = _images(fashion, "train", 30)
    test_x, test_y = _images(fashion, "test", 10)
    with torch.no_grad():
        embedded = embed(base, train_x, pool=base.arch["pool"]).numpy()  # what `train --method features` fits on
    assert set(HEADS) == {"logreg", "linear", "mlp", "svm", "knn", "rf"}  # the README's heads, all in the graph
    models = []
    for name in HEADS:
        head, _ = fit_head(name, embedded, train_y, num_classes=len(CLASSES), seed=0)
        models.append(FeatureClassifier.wrap(base, head))
    graph = AllHeads(models).eval()
    meta = BundleMeta(
        arch={"backbone": "small_cnn"},
        classes=[FASHION_MNIST_CLASSES[c] for c in CLASSES],
        preprocessing=base.preprocessing,
    )
    to_onnx(graph, meta, tmp_path / "heads.onnx")
    with torch.no_grad():
        expected = graph(test_x).view(len(test_x), len(HEADS), -1)
        got = OnnxModel(tmp_path / "heads.onnx")(test_x).view(len(test_x), len(HEADS), -1)
    for index, name in enumerate(HEADS):
        ours, theirs = got[:, index], expected[:, index]
        probabilities = (ours.softmax(1) - theirs.softmax(1)).abs().max()
        assert probabilities <= 1e-4, f"{name}: probabilities differ by {probabilities:.2e}"
        assert torch.equal(ours.argmax(1), theirs.argmax(1)), name
        assert (theirs.argmax(1).numpy() == test_y).mean() > 0.6, name  # a head that learnt: a real comparison
