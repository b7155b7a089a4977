"""What the tests that check algorithms against NumPy by hand share: three tiny clients of a 2-feature, 3-class
problem, their inputs to fedlab's compiled client loop (one epoch, examples in order, batches of BATCH), and
softmax cross-entropy's loss and gradients."""

import collections

import numpy as np

X = [np.array([[1.0, 2.0]], np.float32),
     np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]], np.float32),
     np.array([[0.0, 1.0], [1.5, -0.5]], np.float32)]
Y = [np.array([2], np.int32), np.array([0, 1, 1], np.int32), np.array([1, 0], np.int32)]
BATCH = 2


def inputs(i: int) -> collections.OrderedDict:
    """Client i's round input: its arrays, one epoch in order, batches of BATCH, no step cap."""
    return collections.OrderedDict(x=X[i], y=Y[i], orders=np.arange(len(X[i]), dtype=np.int64)[None],
                                   batch=np.int64(BATCH), steps=np.int64(-1), skip=np.int64(0),
                                   key=np.zeros(2, np.int64))


def softmax_delta(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits z and its gradient with respect to z."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y]).mean())
    p[np.arange(len(y)), y] -= 1.0
    return loss, p / len(y)


def grad(w, b, x, y):
    """Gradient of mean softmax cross-entropy of logits x @ w + b."""
    _, dz = softmax_delta(x @ w + b, y)
    return x.T @ dz, dz.sum(axis=0)


def loss(w, b, x, y) -> float:
    return softmax_delta(x @ w + b, y)[0]
