"""Fitted heads: classical classifiers on pooled backbone features, as plain torch modules.

The features method (`visiontune.features`) fits logistic regression, a random forest, an SVM,
k-nearest neighbours, a linear probe or a small MLP on frozen, pooled backbone features. Each
fitted head is re-expressed here as a torch module whose learned arrays are buffers, so that:

- a bundle stores them in model.safetensors beside the backbone: no pickle, and no scikit-learn
  needed (or trusted) to predict;
- `models.build_model` rebuilds the module from `arch["fitted_head"]` (its kind and shapes);
- the result maps images to logits like any other Classifier: predict, evaluate, export and
  serve need no special case, and the same code computes the validation scores and the bundle's.

Heads whose output is a probability (k-NN, forest) return its logarithm as logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visiontune.data.transforms import Preprocessing
from visiontune.errors import ModelError
from visiontune.models.classifier import Classifier
from visiontune.models.heads import POOLS, pool_features

PROBA_FLOOR = 1e-7  # log(0) guard for heads that output probabilities


class FittedHead(nn.Module):
    """(B, D) pooled features -> (B, K) float32 logits; subclasses keep their learned arrays as buffers.

    Input is first standardised with the `center` and `scale` buffers (identity for heads that
    need no scaling) and, with `l2`, scaled to unit length (k-NN's cosine distance).
    """

    kind: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = ("l2",)  # the constructor's arguments besides the shapes, for config()

    def __init__(self, in_features: int, num_classes: int, *, l2: bool = False) -> None:
        super().__init__()
        self.in_features, self.num_classes, self.l2 = int(in_features), int(num_classes), bool(l2)
        self.register_buffer("center", torch.zeros(self.in_features))
        self.register_buffer("scale", torch.ones(self.in_features))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise (and L2-normalise) raw pooled features, as the head was fitted on them."""
        x = (x.float() - self.center) / self.scale
        return F.normalize(x, dim=1) if self.l2 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.logits(self.prepare(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_standardization(self, center: Any, scale: Any) -> None:
        """Copy a scaler's mean and scale (numpy or torch, shape (D,)) into the buffers."""
        self.center.copy_(torch.as_tensor(center, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))

    def config(self) -> dict[str, Any]:
        """JSON-friendly kind and shapes: `fitted_head(config)` builds an empty twin for `load_state_dict`."""
        shapes = {"kind": self.kind, "in_features": self.in_features, "num_classes": self.num_classes}
        return {**shapes, **{name: getattr(self, name) for name in self.settings}}


class LinearHead(FittedHead):
    """Logits = W x + b on standardised features: logistic regression and the torch linear probe."""

    kind = "linear"

    def __init__(self, in_features: int, num_classes: int, *, l2: bool = False) -> None:
        super().__init__(in_features, num_classes, l2=l2)
        self.fc = nn.Linear(self.in_features, self.num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MLPHead(FittedHead):
    """One ReLU hidden layer with dropout, trained in torch on standardised features."""

    kind = "mlp"
    settings = ("l2", "hidden", "dropout")

    def __init__(
        self, in_features: int, num_classes: int, *, hidden: int = 512, dropout: float = 0.5, l2: bool = False
    ) -> None:
        super().__init__(in_features, num_classes, l2=l2)
        self.hidden, self.dropout = int(hidden), float(dropout)
        self.net = nn.Sequential(
            nn.Linear(self.in_features, self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.num_classes),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class KNNHead(FittedHead):
    """k nearest training vectors by cosine distance (unit vectors, Euclidean), weighted by 1 / distance.

    Like scikit-learn's `weights="distance"`: a training vector at distance 0 takes all the weight.
    """

    kind = "knn"
    settings = ("num_train", "k", "weights")  # always cosine: no l2

    def __init__(
        self, in_features: int, num_classes: int, *, num_train: int, k: int = 10, weights: str = "distance"
    ) -> None:
        super().__init__(in_features, num_classes, l2=True)
        if weights != "distance":  # stored in bundles for a later "uniform"; the fitter only makes this one
            raise ModelError(f"k-NN weights must be 'distance'. Received: weights={weights!r}")
        self.num_train, self.k, self.weights = int(num_train), min(int(k), int(num_train)), weights
        self.register_buffer("train_x", torch.zeros(self.num_train, self.in_features))  # (N, D), unit rows
        self.register_buffer("train_y", torch.zeros(self.num_train, dtype=torch.int64))  # (N,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # |a - b|^2 = 2 - 2 a.b for unit vectors: one matmul instead of a (B, N, D) difference
        squared = (2.0 - 2.0 * x @ self.train_x.T).clamp_min(0.0)  # (B, N)
        nearest, index = squared.topk(self.k, dim=1, largest=False)  # (B, k)
        distance = nearest.sqrt()
        exact = distance == 0
        weight = torch.where(exact.any(dim=1, keepdim=True), exact.float(), 1.0 / distance.clamp_min(1e-12))
        votes = torch.zeros(x.shape[0], self.num_classes, device=x.device).scatter_add_(1, self.train_y[index], weight)
        return (votes / votes.sum(dim=1, keepdim=True)).clamp_min(PROBA_FLOOR).log()


class ForestHead(FittedHead):
    """A forest of axis-aligned decision trees walked in parallel, mean of the leaves' class fractions.

    The trees are packed into flat arrays of `num_trees * num_nodes` nodes (shorter trees padded);
    a leaf points to itself, so `depth` steps bring every tree to its leaf.
    """

    kind = "forest"
    settings = ("num_trees", "num_nodes", "depth")

    def __init__(self, in_features: int, num_classes: int, *, num_trees: int, num_nodes: int, depth: int) -> None:
        super().__init__(in_features, num_classes)
        self.num_trees, self.num_nodes, self.depth = int(num_trees), int(num_nodes), int(depth)
        size = self.num_trees * self.num_nodes
        self.register_buffer("feature", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(size))  # go left when x[feature] <= threshold
        self.register_buffer("left", torch.zeros(size, dtype=torch.int64))  # flat indices
        self.register_buffer("right", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(size, self.num_classes))  # class fractions at each node
        self.register_buffer("roots", torch.arange(self.num_trees) * self.num_nodes, persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        node = self.roots.expand(x.shape[0], -1)  # (B, T)
        for _ in range(self.depth):
            go_left = x.gather(1, self.feature[node]) <= self.threshold[node]
            node = torch.where(go_left, self.left[node], self.right[node])
        proba = self.value[node].mean(dim=1)  # (B, T, K) -> (B, K)
        return proba.clamp_min(PROBA_FLOOR).log()


class SVMHead(FittedHead):
    """An RBF-kernel SVM (one-vs-one, as libsvm trains it), temperature-scaled into probabilities.

    Pairwise decisions are turned into class scores as scikit-learn's `decision_function_shape="ovr"`
    does (votes plus a confidence in (-1/3, 1/3)); logits are those scores times `beta`, the
    inverse temperature fitted by `CalibratedClassifierCV(method="temperature")`. Two classes:
    logits (-d, d) * beta.
    """

    kind = "svm"
    settings = ("num_support",)

    def __init__(self, in_features: int, num_classes: int, *, num_support: int) -> None:
        super().__init__(in_features, num_classes)
        self.num_support = int(num_support)
        pairs = [(i, j) for i in range(self.num_classes) for j in range(i + 1, self.num_classes)]
        self.register_buffer("support", torch.zeros(self.num_support, self.in_features))  # (S, D)
        self.register_buffer("pair_coef", torch.zeros(len(pairs), self.num_support))  # (P, S)
        self.register_buffer("intercept", torch.zeros(len(pairs)))  # (P,)
        self.register_buffer("gamma", torch.ones(1))
        self.register_buffer("beta", torch.ones(1))
        first = torch.zeros(len(pairs), self.num_classes)
        second = torch.zeros(len(pairs), self.num_classes)
        for p, (i, j) in enumerate(pairs):
            first[p, i], second[p, j] = 1.0, 1.0
        self.register_buffer("first", first, persistent=False)  # (P, K): pair p's first class
        self.register_buffer("second", second, persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        squared = (x.pow(2).sum(1, keepdim=True) + self.support.pow(2).sum(1) - 2.0 * x @ self.support.T).clamp_min(0)
        decision = torch.exp(-self.gamma * squared) @ self.pair_coef.T + self.intercept  # (B, P)
        if self.num_classes == 2:
            return torch.stack([-decision[:, 0], decision[:, 0]], dim=1) * self.beta
        wins = decision >= 0  # pair (i, j): positive votes for i
        votes = wins.float() @ self.first + (~wins).float() @ self.second  # (B, K)
        confidence = decision @ (self.first - self.second)
        return (votes + confidence / (3.0 * (confidence.abs() + 1.0))) * self.beta


FITTED_HEADS: dict[str, type[FittedHead]] = {
    cls.kind: cls for cls in (LinearHead, MLPHead, KNNHead, ForestHead, SVMHead)
}


def fitted_head(config: dict[str, Any]) -> FittedHead:
    """An empty head of the kind and shapes in `config` (from `FittedHead.config()`), for `load_state_dict`."""
    kwargs = dict(config)
    kind = kwargs.pop("kind", None)
    if kind not in FITTED_HEADS:
        raise ModelError(f"unknown fitted head kind {kind!r}; this visiontune knows {', '.join(FITTED_HEADS)}")
    in_features, num_classes = kwargs.pop("in_features"), kwargs.pop("num_classes")
    try:
        return FITTED_HEADS[kind](in_features, num_classes, **kwargs)
    except TypeError as exc:
        raise ModelError(f"fitted head {kind!r}: unexpected settings {config} ({exc})") from exc


def embed(model: Classifier, images: torch.Tensor, *, pool: str, tta: bool = False) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, D) float32 pooled features; with `tta`, the mean of the image's and its mirror's.

    The one definition of "the features" shared by extraction and by a FeatureClassifier's forward.
    """
    if tta:  # one batch of 2B: the mirror costs a forward pass but no extra call
        pooled = pool_features(model.forward_features(torch.cat([images, images.flip(-1)])), pool).float()
        plain, mirrored = pooled[: images.shape[0]], pooled[images.shape[0] :]  # not chunk(2): exports with any batch
        return (plain + mirrored) / 2
    return pool_features(model.forward_features(images), pool).float()


class PooledHead(nn.Module):
    """Pooling followed by a fitted head; takes the place of `ClassifierHead` in a Classifier."""

    def __init__(self, fitted: FittedHead, pool: str) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ModelError(f"pool must be one of {', '.join(POOLS)}. Received: pool={pool!r}")
        self.fitted, self.pool = fitted, pool

    @property
    def num_classes(self) -> int:
        return self.fitted.num_classes

    def forward(self, feature_map: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = pool_features(feature_map, self.pool).float()
        return x if pre_logits else self.fitted(x)

    def reset(self, num_classes: int) -> None:
        raise ModelError(
            f"a fitted {self.fitted.kind} head can't be reset to {num_classes} classes; fit a new one"
            " (visiontune train DATA --method features) or fine-tune (--method finetune)"
        )


class FeatureClassifier(Classifier):
    """A frozen backbone, pooling (optionally over the image and its mirror) and a fitted head.

    Example:
        >>> model = FeatureClassifier.wrap(create_classifier("efficientnet_lite0", 10), head)  # doctest: +SKIP
        >>> model(images).shape  # doctest: +SKIP
        torch.Size([8, 10])
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: FittedHead,
        *,
        pool: str,
        tta: bool,
        preprocessing: Preprocessing,
        arch: dict[str, Any],
    ) -> None:
        arch = {**arch, "pool": pool, "num_classes": head.num_classes, "fitted_head": head.config(), "tta": tta}
        super().__init__(backbone, PooledHead(head, pool), preprocessing=preprocessing, arch=arch)  # type: ignore[arg-type]
        self.tta = tta
        self.requires_grad_(False)

    @classmethod
    def wrap(
        cls, model: Classifier, head: FittedHead, *, pool: str | None = None, tta: bool = False
    ) -> FeatureClassifier:
        """`model`'s backbone and preprocessing with `head` in place of its own head."""
        pool = pool or model.arch["pool"]
        return cls(model.backbone, head, pool=pool, tta=tta, preprocessing=model.preprocessing, arch=model.arch)

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> FeatureClassifier:
        base = Classifier.from_arch({k: v for k, v in arch.items() if k not in ("fitted_head", "tta")})
        return cls.wrap(base, fitted_head(arch["fitted_head"]), pool=arch["pool"], tta=bool(arch.get("tta")))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D): the pooled features the head was fitted on."""
        return embed(self, images, pool=self.head.pool, tta=self.tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fitted(self.embed(x))  # (B, num_classes)
