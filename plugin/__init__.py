"""TensorBoard plugin for Training Health (filled in by the tab issue)."""
