"""L2-regularised logistic regression on w8a, as Stich (2019) sets it up: the data, f and its
gradients, the exact minimum, and the step-size schedules (docs/reproduction.md, section 1)."""
import gzip
import os

import numpy

import runner

FSTAR_TOLERANCE = 1e-10  # gradient norm the reference solution must reach


def load_w8a(path=os.path.join(runner.DATA, "w8a.gz")):
    """(X dense float64 [n, 300], y in {-1, +1}) from the LIBSVM file."""
    rows, labels = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue  # the file ends with an empty line
            labels.append(float(fields[0]))
            rows.append([int(kv.split(":")[0]) - 1 for kv in fields[1:]])
    x = numpy.zeros((len(rows), 300))
    for i, cols in enumerate(rows):
        x[i, cols] = 1.0  # w8a's features are binary
    return x, numpy.array(labels)


class Problem:
    """f(w) = mean log(1 + exp(-y x.w)) + (lam/2)|w|^2 with lam = 1/n."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.n, self.d = x.shape
        # x is binary and 4% dense, so x @ w is a sum of w[cols] per row (a fifth of the time).
        rows, self.cols = numpy.nonzero(x)
        self.starts = numpy.minimum(numpy.searchsorted(rows, numpy.arange(self.n)), len(rows) - 1)
        self.empty = numpy.bincount(rows, minlength=self.n) == 0
        self.lam = 1.0 / self.n
        self.smoothness = numpy.linalg.eigvalsh(x.T @ x / self.n).max() / 4 + self.lam
        self.kappa = self.smoothness / self.lam

    def loss(self, w):
        margins = numpy.add.reduceat(w[self.cols], self.starts)
        margins[self.empty] = 0.0
        return numpy.mean(numpy.logaddexp(0.0, -self.y * margins)) + self.lam / 2 * w @ w

    def gradient(self, w, rows=None):
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        s = -y / (1.0 + numpy.exp(y * (x @ w)))
        return x.T @ s / len(y) + self.lam * w

    def solve(self):
        """(f*, |grad f(w*)|): Newton's method with backtracking (d = 300: the Hessian is cheap)."""
        w = numpy.zeros(self.d)
        for _ in range(50):
            g = self.gradient(w)
            if numpy.linalg.norm(g) < FSTAR_TOLERANCE:
                break
            p = 1.0 / (1.0 + numpy.exp(-self.y * (self.x @ w)))
            hessian = (self.x.T * (p * (1 - p))) @ self.x / self.n + self.lam * numpy.eye(self.d)
            step, t = numpy.linalg.solve(hessian, g), 1.0
            while self.loss(w - t * step) > self.loss(w) - 0.25 * t * g @ step:
                t /= 2
            w = w - t * step
        return self.loss(w), float(numpy.linalg.norm(self.gradient(w)))


class Schedule:
    """Step sizes eta_t and the averaging weights w_t = (a + t)^2 of x_hat.

    theory: eta_t = 4 / (mu (a + t)), a = max(16 kappa, H) (Stich's Theorem 2.2).
    tuned:  eta_t = eta0 / (1 + t / c), weights (c + t)^2; eta0 and c tuned at K = 1, H = 1."""

    def __init__(self, kind, problem, h, eta0=None, c=None):
        self.kind = kind
        if kind == "theory":
            self.a = max(16 * problem.kappa, h)
            self.mu = problem.lam
        else:
            self.eta0, self.a = eta0, c

    def eta(self, t):
        if self.kind == "theory":
            return 4.0 / (self.mu * (self.a + t))
        return self.eta0 / (1.0 + t / self.a)

    def weight(self, t):
        return (self.a + t) ** 2
