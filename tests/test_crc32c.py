"""The numpy CRC-32C against a plain byte-at-a-time reference."""

import numpy as np
import pytest

from training_health.io import crc32c


def reference_crc32c(data):
    """Bit by bit, straight from the definition (reflected, poly 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_check_value():
    # The standard check value of CRC-32C.
    assert crc32c.crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 63, 64, 65, 500, 4095, 4096, 4097, 4098, 4099, 4100,
                               8192, 8195, 9000])
def test_matches_reference_across_chunk_boundaries(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c.crc32c(data) == reference_crc32c(data)
    assert crc32c.crc32c(b"\xff" * n) == reference_crc32c(b"\xff" * n)


def test_masked_crc_and_record_match_tensorboard():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer.record_writer import RecordWriter

    class Sink:
        def __init__(self):
            self.data = b""

        def write(self, data):
            self.data += data

    rng = np.random.default_rng(1)
    for n in (0, 8, 100, 700, 5000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c.masked_crc32c(data) == masked_crc32c(data)
        sink = Sink()
        RecordWriter(sink).write(data)
        assert crc32c.record(data) == sink.data
