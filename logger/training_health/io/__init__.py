"""Reading and writing runs: event-file framing, writers, readers, bucket URLs."""
