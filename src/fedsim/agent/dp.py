"""Differential privacy at the sending site, as the FeatureCloud controller applies it.

The value is clipped (L1 norm for Laplace noise, L2 for Gaussian) to ``clippingVal``
unless a ``sensitivity`` is given, then noise calibrated to the sensitivity and epsilon
(and delta) is added to every number, before the value leaves the site.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from fedsim.agent.jsonvalues import flatten, unflatten


class DpError(ValueError):
    pass


def noise_scale(dp: dict[str, Any]) -> tuple[str, float, float | None]:
    """(noise type, scale, clipping bound or None).

    Laplace: b = S/epsilon; Gauss: sigma = S * sqrt(2 ln(1.25/delta)) / epsilon, where S is
    the sensitivity, or the clipping bound when no sensitivity is given.
    """
    noisetype = dp.get("noisetype", "laplace")
    epsilon = float(dp.get("epsilon", 1.0))
    if epsilon <= 0:
        raise DpError(f"differential privacy needs epsilon > 0, got {epsilon}")
    sensitivity = dp.get("sensitivity")
    clip = None if sensitivity is not None else float(dp.get("clippingVal", 10.0))
    delta_f = float(sensitivity) if sensitivity is not None else clip
    assert delta_f is not None
    if noisetype == "laplace":
        return noisetype, delta_f / epsilon, clip
    if noisetype == "gauss":
        delta = float(dp.get("delta", 0.0))
        if not 0 < delta < 1:
            raise DpError(f"Gaussian noise needs 0 < delta < 1, got {delta}")
        return noisetype, delta_f * math.sqrt(2 * math.log(1.25 / delta)) / epsilon, clip
    raise DpError(f"unknown differential privacy noise type {noisetype!r}")


def clip(values: np.ndarray, bound: float, order: int) -> np.ndarray:
    norm = float(np.linalg.norm(values, ord=order)) if values.size else 0.0
    return values * (bound / norm) if norm > bound else values


def privatise(payload: bytes, dp: dict[str, Any], rng: np.random.Generator) -> bytes:
    noisetype, scale, bound = noise_scale(dp)
    skeleton, numbers = flatten(json.loads(payload))
    values = np.asarray(numbers, dtype=float)
    if bound is not None:
        values = clip(values, bound, order=1 if noisetype == "laplace" else 2)
    if noisetype == "laplace":
        values = values + rng.laplace(0.0, scale, size=values.shape)
    else:
        values = values + rng.normal(0.0, scale, size=values.shape)
    skeleton = _all_floats(skeleton)
    return json.dumps(unflatten(skeleton, values.tolist())).encode()


def _all_floats(skeleton: Any) -> Any:
    """Noised numbers are real numbers, whatever they were before."""
    if isinstance(skeleton, list):
        return [_all_floats(item) for item in skeleton]
    if isinstance(skeleton, dict):
        return {key: _all_floats(item) for key, item in skeleton.items()}
    return "float"
