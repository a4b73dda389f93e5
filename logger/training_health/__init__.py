"""Training Health: per-batch gradient, activation and dead-unit statistics.

`import training_health` stays light (no TensorFlow, no pandas).
`training_health.load(path)` reads logged runs into pandas DataFrames. The
capture code lives in `training_health.keras` (HealthCallback) and
`training_health.tf` (the GradientTape wrapper), which import TensorFlow.
"""

__version__ = "0.1.0"

from training_health.format import FORMAT_VERSION, PLUGIN_NAME  # noqa: E402
from training_health.records import Alert, LayerInfo, StepStats  # noqa: E402
from training_health.io.frames import HealthFrames, load  # noqa: E402

__all__ = ["Alert", "FORMAT_VERSION", "HealthFrames", "LayerInfo", "PLUGIN_NAME", "StepStats",
           "__version__", "load"]
