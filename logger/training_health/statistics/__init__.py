"""What each statistic means, as plain numpy (the reference implementation).

One module per quantity (`gradients`, `weights`, `activations`,
`dead_units`, `inputs`, `histograms`) and the sampling rule they share
(`sampling`); this package re-exports them all.

The logger computes the same quantities with TensorFlow ops inside the
training step (`training_health.capture.tf_ops`, `training_health.capture.torch_ops`); the tests check one against the
other on the same batch. Conventions shared by both:

* Norms, maxima, means and stds are taken over the *finite* entries; the
  non-finite entries are counted separately (`*_nonfinite`).
* A "unit" is an index of the output's last axis (a Dense unit, a conv
  channel, an embedding dimension). A unit is dead on a batch when its output
  is <= 0 for every example and every other position of the batch.
* Statistics that do not apply are NaN (no weights -> no gradient stats,
  unbounded activation -> no saturation fraction).
* Gradient norms and non-finite counts always cover every entry. The other
  statistics of a weight or gradient tensor with more than
  `SAMPLE_ELEMENTS` entries (max |g|, the fraction of zeros, ||W||,
  ||dW||) are taken over a fixed sample of it: `SAMPLE_ELEMENTS // SAMPLE_BLOCK` blocks
  of `SAMPLE_BLOCK` consecutive entries, at positions drawn once per tensor
  size (`sample`). Counts and sums over the sample are scaled up by
  n / sample size. On a CPU each extra pass over a large kernel costs about
  as much as the optimizer's own arithmetic on it; the sample keeps the
  step's overhead small. On a tensor whose entries are alike (a conv
  kernel, Adam's updates) it estimates fractions to about +-0.01 and norms
  to about 1%; where a few rows dominate (an embedding, a kernel behind
  inputs of very different scales) the estimate of one step can be off
  by 10-20% (see docs/format.md).
"""

from training_health.statistics.sampling import (  # noqa: F401
    SAMPLE_BLOCK, SAMPLE_ELEMENTS, sample, sample_block_indices, sample_position_indices)
from training_health.statistics.gradients import gradient_stats  # noqa: F401
from training_health.statistics.weights import weight_stats  # noqa: F401
from training_health.statistics.activations import (  # noqa: F401
    ACTIVATION_BOUNDS, activation_sample, activation_stats)
from training_health.statistics.dead_units import (  # noqa: F401
    dead_fraction, dead_fraction_window, units_active)
from training_health.statistics.inputs import input_stats  # noqa: F401
from training_health.statistics.histograms import activation_histogram, gradient_histogram  # noqa: F401

__all__ = [
    "ACTIVATION_BOUNDS", "SAMPLE_BLOCK", "SAMPLE_ELEMENTS", "activation_histogram",
    "activation_sample", "activation_stats", "dead_fraction", "dead_fraction_window",
    "gradient_histogram", "gradient_stats", "input_stats", "sample", "sample_block_indices",
    "sample_position_indices", "units_active", "weight_stats",
]
