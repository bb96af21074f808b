"""The NumPy reference backend: the last fallback and the test oracle.

Written for clarity, not speed: every quantity is formed the way the
definitions read (max-shifted, then normalised), with full-size temporaries.
Non-finite values follow plain IEEE arithmetic, which is what PyTorch does.
"""

from __future__ import annotations

import numpy as np

from ._interface import FloatArray, IntArray, LossParams, fill_totals, index_target_stats, row_outputs, row_scale


def _row_max(x: FloatArray) -> FloatArray:
    """Row maxima of ``x (B, C, K)`` as ``(B, 1, K)``, with ``-inf`` set to 0.

    A row of all ``-inf`` then gives ``exp(-inf) = 0`` sums and a ``-inf``
    log-sum-exp instead of ``-inf - -inf = nan``. A ``+inf`` maximum is kept:
    ``inf - inf = nan`` makes the row NaN, as in torch's (log_)softmax.
    """
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 1, x.shape[2]), dtype=x.dtype)
    m = np.max(x, axis=1, keepdims=True)
    return np.where(m == -np.inf, np.zeros_like(m), m)


class _Parts:
    """A row's log-softmax written as ``(x - M) - log1p(S')``.

    ``S'`` (``rest``) sums ``exp(x - M)`` over every class but the first
    maximum (``first``): ``S = 1 + S'``. Leaving that 1 out keeps ``log(S)``,
    and ``p - 1`` of the maximum, relatively accurate when one class
    dominates (``S'`` below one ulp of 1). A row without a maximum (all
    ``-inf``) has ``S' = -1``; a ``+inf`` maximum makes ``S'`` NaN.
    """

    def __init__(self, x: FloatArray) -> None:
        m = _row_max(x)
        e = np.exp(x - m)
        if x.shape[1] == 0:
            self.first = np.zeros((x.shape[0], 1, x.shape[2]), dtype=np.intp)
            rest = np.full(m.shape, -1.0, dtype=x.dtype)
        else:
            raw_max = np.max(x, axis=1, keepdims=True)
            self.first = np.argmax(x, axis=1, keepdims=True)
            others = e.copy()
            np.put_along_axis(others, self.first, 0, axis=1)
            rest = np.where(
                raw_max == -np.inf, np.sum(e, axis=1, keepdims=True) - 1, np.sum(others, axis=1, keepdims=True)
            )
            rest = np.where(raw_max == np.inf, np.nan, rest)
        self.shift = m
        self.rest = rest  # (B, 1, K)
        self.log_sum = np.log1p(rest)
        self.log_probs = (x - m) - self.log_sum
        self.lse = (m + self.log_sum)[:, 0, :]

    def exact_at_max(self, x: FloatArray, index: IntArray, coef: FloatArray, part: FloatArray) -> FloatArray:
        """``coef * p - part`` at class ``index`` (B, 1, K) of each row, exactly when that class is the maximum.

        There ``p = 1 / S`` and ``coef / S - part = ((coef - part) - part * S') / S``: no cancellation.
        """
        p_term = np.take_along_axis(np.exp(self.log_probs), index, axis=1) * coef - part
        exact = ((coef - part) - part * self.rest) / (1 + self.rest)
        is_max = np.take_along_axis(x, index, axis=1) == self.shift
        return np.where(is_max, exact, p_term)


def _log_softmax_parts(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return ``(log_probs (B, C, K), lse (B, K))`` of ``x (B, C, K)``."""
    parts = _Parts(x)
    return parts.log_probs, parts.lse


def _apply_softcap(x: FloatArray, softcap: float) -> FloatArray:
    """``softcap * tanh(x / softcap)``, computed in float64 and rounded once."""
    if softcap == 0.0:
        return x
    return (softcap * np.tanh(x.astype(np.float64) / softcap)).astype(x.dtype)


def _softcap_slope(x: FloatArray, softcap: float) -> FloatArray:
    """``d capped / d x = 1 - tanh(x / softcap)**2`` in float64.

    For ``|x| >> softcap`` the slope is tiny; forming it from a float32
    ``tanh`` would cancel to 0 or to a multiple of 2**-24.
    """
    return 1 - np.tanh(x.astype(np.float64) / softcap) ** 2


class NumpyBackend:
    """Reference kernels; see :class:`fastxent._backends._interface.Backend`."""

    name = "numpy"
    index_target_stats = staticmethod(index_target_stats)

    def logsumexp(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        with np.errstate(all="ignore"):
            lse = _log_softmax_parts(x)[1]
            # A +inf logit makes the sum +inf (scipy and torch agree), not nan.
            has_inf = np.any(x == np.inf, axis=1) & ~np.any(np.isnan(x), axis=1)
            out[...] = np.where(has_inf, np.inf, lse)

    def logsumexp_scaled(self, x: FloatArray, b: FloatArray, out: FloatArray, sign: FloatArray, n_threads: int) -> None:
        with np.errstate(all="ignore"):
            a = np.where(b == 0, -np.inf, x)  # b == 0 excludes an entry, even an infinite or NaN one
            a_max = np.max(a, axis=1, keepdims=True) if a.shape[1] else np.full(out.shape, -np.inf)[:, None, :]
            at_max = a == a_max
            # For precision the maxima's weights m stay out of the sum, as in SciPy: S = m * (1 + s).
            m = np.sum(np.where(at_max, b, 0), axis=1, keepdims=True)
            s = np.sum(np.where(at_max, 0, b * np.exp(a - a_max)), axis=1, keepdims=True)
            s = np.where(s == 0, s, s / m)
            sgn = np.sign(s + 1) * np.sign(m)
            s = np.where(s < -1, -s - 2, s)
            result = np.log1p(s) + np.log(np.abs(m)) + a_max
            # Where that is not finite (an infinite maximum, all weights zero), the plain sum decides.
            direct = np.sum(np.where(b == 0, 0, b * np.exp(x)), axis=1, keepdims=True)
            finite = np.isfinite(result)
            out[...] = np.where(finite, result, np.log(np.abs(direct)))[:, 0, :]
            sign[...] = np.where(finite, sgn, np.sign(direct))[:, 0, :]

    def softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        with np.errstate(all="ignore"):
            e = np.exp(x - _row_max(x))
            out[...] = e / np.sum(e, axis=1, keepdims=True)

    def log_softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        with np.errstate(all="ignore"):
            out[...] = _log_softmax_parts(x)[0]

    def cross_entropy_index(
        self,
        logits: FloatArray,
        target: IntArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        n_classes = logits.shape[1]
        loss, lse = row_outputs(loss, lse, logits)
        if weight is None:
            weight = np.ones(n_classes, dtype=logits.dtype)
        # With no classes every target is ignored; smoothing has nothing to spread over.
        eps = params.label_smoothing if n_classes else 0.0
        valid = (target != params.ignore_index) & (target >= 0) & (target < n_classes)
        safe_target = np.where(valid, target, 0)[:, None, :]
        with np.errstate(all="ignore"):
            x = _apply_softcap(logits, params.softcap)
            parts = _Parts(x)
            log_probs, row_lse = parts.log_probs, parts.lse
            if n_classes == 0:
                # Every row is ignored: the API rejects any other target.
                w_target = np.zeros(target.shape, dtype=logits.dtype)
                log_p_target = np.zeros(target.shape, dtype=logits.dtype)
            else:
                w_target = weight[safe_target[:, 0, :]]
                log_p_target = np.take_along_axis(log_probs, safe_target, axis=1)[:, 0, :]
            w_col = weight[None, :, None]
            row_loss = -(1 - eps) * w_target * log_p_target
            if eps > 0:
                row_loss = row_loss + eps / n_classes * -np.sum(w_col * log_probs, axis=1)
            loss[...] = np.where(valid, row_loss, 0)
            lse[...] = np.where(valid, row_lse, 0)
            fill_totals(loss, lse, totals)
            if grad is None or grad_scale is None:
                return
            probs = np.exp(log_probs)
            coef = (1 - eps) * w_target
            if eps > 0:
                coef = coef + eps / n_classes * np.sum(weight)
            if params.z_coef != 0:
                coef = coef + 2 * params.z_coef * row_lse
            g = probs * coef[:, None, :]
            if n_classes > 0:
                at_target = parts.exact_at_max(x, safe_target, coef[:, None, :], (1 - eps) * w_target[:, None, :])
                np.put_along_axis(g, safe_target, at_target, axis=1)
            if eps > 0:
                g = g - eps / n_classes * w_col
            g = g * row_scale(grad_scale, loss.shape)[:, None, :]
            if params.softcap != 0:
                g = g * _softcap_slope(logits, params.softcap)
            grad[...] = np.where(valid[:, None, :], g, 0)

    def cross_entropy_probs(
        self,
        logits: FloatArray,
        target: FloatArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        n_classes = logits.shape[1]
        loss, lse = row_outputs(loss, lse, logits)
        if weight is None:
            weight = np.ones(n_classes, dtype=logits.dtype)
        eps = params.label_smoothing if n_classes else 0.0
        with np.errstate(all="ignore"):
            x = _apply_softcap(logits, params.softcap)
            parts = _Parts(x)
            log_probs, row_lse = parts.log_probs, parts.lse
            smoothed = target * (1 - eps) + eps / n_classes if eps > 0 else target
            weighted_target = smoothed * weight[None, :, None]
            # + 0.0 turns the -0.0 of an empty sum (no classes) into the 0.0 every backend gives.
            loss[...] = -np.sum(log_probs * weighted_target, axis=1) + 0.0
            lse[...] = row_lse
            fill_totals(loss, lse, totals)
            if grad is None or grad_scale is None:
                return
            coef = np.sum(weighted_target, axis=1)
            if params.z_coef != 0:
                coef = coef + 2 * params.z_coef * row_lse
            g = np.exp(log_probs) * coef[:, None, :] - weighted_target
            if n_classes > 0:
                at_max = np.take_along_axis(weighted_target, parts.first, axis=1)
                np.put_along_axis(g, parts.first, parts.exact_at_max(x, parts.first, coef[:, None, :], at_max), axis=1)
            g = g * row_scale(grad_scale, loss.shape)[:, None, :]
            if params.softcap != 0:
                g = g * _softcap_slope(logits, params.softcap)
            grad[...] = g


BACKEND = NumpyBackend()
