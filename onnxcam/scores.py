"""What the graph's ``scores`` are, and the math every consumer asks of them (pure numpy, no onnxruntime).

The kind is stored in the metadata (``onnxcam.scores_kind``; absent = ``logits``) and decided at export
(detected where unambiguous, else declared with ``--scores``):

``logits``
    one score per class, probabilities ``softmax_k(z)`` (the default; a trailing Softmax/LogSoftmax is skipped at
    export so that the graph explains the logits, as pytorch-grad-cam does).
``sigmoid``
    independent logits, probability ``σ(z_k)`` per class: multi-label heads, and the single-logit binary classifier
    ``[N, 1]``. A binary head is presented as **two classes**: class 0 = negative (``p = 1 − σ(z) = σ(−z)``, explained
    quantity ``−z``), class 1 = positive (``σ(z)``, explained ``z``), as pytorch-grad-cam's
    ``BinaryClassifierOutputTarget(category)``.
``probabilities``
    already normalised outputs (kept as they are): the probability is the score itself.
``raw``
    regression outputs, embeddings: no probabilities; top-k ranks by value, probability-based consumers refuse.

A *seed* ``s`` ``[N, *S]`` weighs the explained quantity ``y = Σ s ⊙ scores`` (METHODS.md, Targets). Its probability
(:func:`target_probability`) is the seed-weighted mean of the per-element probabilities, where for sigmoid scores a
negative weight stands for the negative side of that logit (``σ(−z)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOGITS, SIGMOID, PROBABILITIES, RAW = "logits", "sigmoid", "probabilities", "raw"
KINDS = (LOGITS, SIGMOID, PROBABILITIES, RAW)
#: Class names of the two sides of a single-logit binary head, in class-index order.
BINARY_SIDES = ("negative", "positive")


class ScoresError(ValueError):
    """The scores kind cannot give what was asked (e.g. probabilities of raw scores)."""


def check_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`KINDS`; ``ScoresError`` naming the choices otherwise."""
    if kind not in KINDS:
        raise ScoresError(f"unknown scores kind {kind!r}; choose from {', '.join(KINDS)}")
    return kind


def is_binary(kind: str, score_shape: Sequence[int]) -> bool:
    """Whether the scores are one sigmoid logit per image (``S = (1,)`` or a dense ``(1, H, W)``)."""
    return kind == SIGMOID and int(score_shape[0]) == 1


def class_count(kind: str, score_shape: Sequence[int]) -> int:
    """Number of classes a target can name: ``K``, or 2 (negative, positive) for a binary head."""
    return 2 if is_binary(kind, score_shape) else int(score_shape[0])


def class_labels(kind: str, score_shape: Sequence[int], labels: Sequence[str] | None) -> tuple[str, ...] | None:
    """Class names in class-index order. Binary heads: 2 labels are ``(negative, positive)``; 1 label names the
    positive class (the negative side becomes ``not <label>``); none → :data:`BINARY_SIDES`."""
    if not is_binary(kind, score_shape):
        return tuple(labels) if labels else None
    if labels and len(labels) == 2:
        return tuple(labels)
    if labels and len(labels) == 1:
        return (f"not {labels[0]}", labels[0])
    return BINARY_SIDES


def describe(kind: str, score_shape: Sequence[int]) -> str:
    """One phrase saying what the scores are, for ``onnxcam info``."""
    if is_binary(kind, score_shape):
        return "sigmoid: one logit, binary: class 0 = negative (σ(−z)), class 1 = positive (σ(z))"
    return {
        LOGITS: "logits: probabilities by softmax",
        SIGMOID: "sigmoid: multi-label, σ per class",
        PROBABILITIES: "probabilities: already normalised",
        RAW: "raw: no probabilities",
    }.get(kind, kind)


def per_class(scores: np.ndarray) -> np.ndarray:
    """Per-class scores ``[N, K]``: the scores, or their spatial mean for a dense output ``[N, K, H, W]``."""
    return scores if scores.ndim == 2 else scores.reshape(*scores.shape[:2], -1).mean(axis=2)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^{−z})`` in float64, without overflow for large ``|z|``."""
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax along ``axis`` in float64 (max subtracted)."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Element probabilities ``[N, K, …]`` (float64) of scores ``[N, K, …]``, the class axis being 1.

    ``logits``: softmax over the class axis; ``sigmoid``: ``σ`` element-wise; ``probabilities``: the scores;
    ``raw``: :class:`ScoresError`.
    """
    if kind == LOGITS:
        return softmax(scores, axis=1)
    if kind == SIGMOID:
        return sigmoid(scores)
    if kind == PROBABILITIES:
        return np.asarray(scores, np.float64)
    raise ScoresError(
        f"{kind} values (a regression or embedding head, or a unit target) have no probabilities; "
        "use the value itself (e.g. --option score=logit, --option metric_score=logit)"
    )


def class_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Probability of each class ``[N, classes]`` (of the spatially averaged scores for a dense output); a binary
    head gives ``[σ(−z), σ(z)]``; ``raw`` scores give their values (ranked, not probabilities)."""
    z = per_class(np.asarray(scores))
    if kind == RAW:
        return np.asarray(z, np.float64)
    if is_binary(kind, z.shape[1:]):
        p = sigmoid(z[:, 0])
        return np.stack([1.0 - p, p], axis=1)
    return probabilities(z, kind)


def top1(scores: np.ndarray, kind: str) -> np.ndarray:
    """Predicted class per image ``[N]`` (int64): the most probable class (the positive side of a binary head when
    ``z ≥ 0``)."""
    if is_binary(kind, np.shape(scores)[1:]):
        return (per_class(np.asarray(scores))[:, 0] >= 0).astype(np.int64)
    return np.argmax(per_class(np.asarray(scores)), axis=1).astype(np.int64)


def topk(scores: np.ndarray, kind: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes per image, best first: ``(indices [N, k], probabilities [N, k])``.

    ``raw`` scores are ranked by value (and the returned values are the scores). ``k`` is clipped to the classes.
    """
    p = class_probabilities(scores, kind)
    k = max(1, min(k, p.shape[1]))
    best = np.argpartition(-p, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(best, np.argsort(-np.take_along_axis(p, best, axis=1), axis=1, kind="stable"), axis=1)
    return order, np.take_along_axis(p, order, axis=1)


def class_seed(classes: np.ndarray, kind: str, score_shape: Sequence[int]) -> np.ndarray:
    """Seeds ``[N, *S]`` (float32) explaining one class per image (``classes`` ``[N]``, each ``≥ 0``).

    One-hot of the class, broadcast over a dense output's positions; a binary head's class 0 (negative) is ``−1`` on
    the logit and class 1 (positive) is ``+1``.
    """
    classes = np.asarray(classes, np.int64)
    seed = np.zeros((len(classes), *score_shape), np.float32)
    if is_binary(kind, score_shape):
        seed[:, 0] = np.where(classes > 0, 1.0, -1.0)[(...,) + (None,) * (len(score_shape) - 1)]
    else:
        seed[np.arange(len(classes)), classes] = 1.0
    return seed


def class_set_seed(classes: Sequence[int], kind: str, score_shape: Sequence[int]) -> np.ndarray:
    """One seed ``[*S]`` explaining the sum of the scores of ``classes`` (pytorch-grad-cam: a sum of
    ``ClassifierOutputTarget``s); not defined for a binary head, whose two sides share one logit."""
    if is_binary(kind, score_shape):
        raise ScoresError("a binary head has one logit: name one side (positive or negative), not a set of classes")
    return class_seed(np.asarray(sorted(set(classes))), kind, score_shape).sum(axis=0)


def target_probability(scores: np.ndarray, seed: np.ndarray, kind: str) -> np.ndarray:
    """Probability of the explained quantity per row ``[M]``: ``Σ |s| ⊙ p(sign(s)) / Σ |s|``.

    ``scores`` ``[M, *S]``, ``seed`` ``[M or 1, *S]``. ``p`` is :func:`probabilities` of the scores; for ``sigmoid``
    scores a negative weight takes the negative side, ``p = σ(−z)`` (binary class 0). Other kinds need non-negative
    weights. For a one-hot seed this is the class's probability; for a dense region, its mean probability.
    """
    seed = np.broadcast_to(np.asarray(seed, np.float64), np.shape(scores))
    flat = (len(seed), -1)
    if kind == SIGMOID:
        weight = np.abs(seed)
        p = sigmoid(np.sign(seed) * np.asarray(scores, np.float64))
    else:
        if np.any(seed < 0):
            raise ScoresError(f"probabilities of {kind} scores need a seed of non-negative weights (a class target)")
        weight, p = seed, probabilities(scores, kind)
    total = weight.reshape(flat).sum(axis=1)
    if np.any(total <= 0):
        raise ScoresError("probability-based values need a class target (a non-zero seed)")
    return (weight * p).reshape(flat).sum(axis=1) / total


def predicted_classes(scores: np.ndarray, kind: str, threshold: float = 0.5) -> list[np.ndarray]:
    """Per image, the classes whose probability exceeds ``threshold`` (ascending indices): every label a
    multi-label head predicts; the predicted side of a binary head (``threshold`` 0.5)."""
    if kind == RAW:
        raise ScoresError("raw scores have no probabilities: name the classes to explain instead of 'predicted'")
    return [np.flatnonzero(row > threshold) for row in class_probabilities(scores, kind)]
