"""The Training Health tab for TensorBoard.

TensorBoard finds this module through the ``tensorboard_plugins`` entry point
``training_health = tensorboard_plugin_training_health:TrainingHealthLoader``. It imports
nothing heavy: the plugin class and its numpy code are imported in
``TrainingHealthLoader.load()``, where TensorBoard catches and logs a failure
instead of refusing to start.
"""

from tensorboard.plugins import base_plugin

from training_health.format import PLUGIN_NAME

# How many values per tag TensorBoard keeps for this plugin unless the user
# says otherwise with `--samples_per_plugin training_health=N` (0 keeps all).
# TensorBoard's own default for a third-party plugin is 10 (Python backend)
# or 100 (`--load_fast`), far too few for a per-batch heatmap.
DEFAULT_SAMPLES = 10000


class TrainingHealthLoader(base_plugin.TBLoader):
    """Raises the plugin's sample default and builds the plugin.

    Args:
        default_samples: samples kept per tag when the user gives no
            `--samples_per_plugin` value for this plugin. Defaults to
            `DEFAULT_SAMPLES` (10000).
    """

    def __init__(self, default_samples=DEFAULT_SAMPLES):
        if not isinstance(default_samples, int) or default_samples < 0:
            raise ValueError(
                "default_samples must be a non-negative int (0 keeps all); received %r"
                % (default_samples,)
            )
        self.default_samples = default_samples

    def fix_flags(self, flags):
        samples = getattr(flags, "samples_per_plugin", None)
        if samples is None:
            flags.samples_per_plugin = samples = {}
        samples.setdefault(PLUGIN_NAME, self.default_samples)

    def load(self, context):
        from tensorboard_plugin_training_health.plugin import TrainingHealthPlugin

        return TrainingHealthPlugin(context)


__all__ = ["DEFAULT_SAMPLES", "PLUGIN_NAME", "TrainingHealthLoader"]
