"""CRC-32C (Castagnoli) and the TFRecord framing of event files, fast in pure numpy.

Every record of an event file carries two masked CRC-32C checksums. A
byte-at-a-time loop in Python costs ~0.13 us per byte (~60 us for one
step's events), on the writer thread but holding the interpreter lock the
training loop also needs. CRC-32C is linear over GF(2): the checksum of a
message is the XOR of one precomputed 32-bit value per set bit, chosen by
the bit's distance from the end of the message. This module does that with
numpy, a few array operations per record whatever its length.
"""

import struct

import numpy as np

_POLY = 0x82F63B78  # CRC-32C, reflected
_CHUNK = 4096  # bytes per table pass; longer messages go chunk by chunk
_SHORT = 64  # below this many bytes the plain loop is as fast


def _byte_table():
    table = []
    for byte in range(256):
        reg = byte
        for _ in range(8):
            reg = (reg >> 1) ^ (_POLY if reg & 1 else 0)
        table.append(reg)
    return table


_TABLE = _byte_table()
_BITS = None  # [_CHUNK * 8] uint32, built on first use


def _bit_table():
    """Row 8 * (_CHUNK - 1 - d) + j: what bit j of a byte d bytes before the
    end of a message adds to the register (zero initial register)."""
    global _BITS
    if _BITS is None:
        rows = np.empty([_CHUNK, 8], np.uint32)
        cur = [_TABLE[1 << j] for j in range(8)]
        for d in range(_CHUNK):
            rows[_CHUNK - 1 - d] = cur
            cur = [(x >> 8) ^ _TABLE[x & 0xFF] for x in cur]
        _BITS = rows.reshape(-1)
    return _BITS


def _loop(reg, data):
    for byte in data:
        reg = _TABLE[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


def _chunks(n):
    """Chunk lengths covering n >= 4 bytes, each 4.._CHUNK long."""
    sizes = [_CHUNK] * (n // _CHUNK)
    rest = n % _CHUNK
    if rest:
        if rest < 4:  # a register of 4 bytes must fit in the last chunk
            sizes[-1] -= 4
            rest += 4
        sizes.append(rest)
    return sizes


def _register(reg, data):
    """The CRC register after `data` (numpy uint8, at least 4 bytes), from `reg`."""
    bits = _bit_table()
    start = 0
    for size in _chunks(len(data)):
        rows = bits[(_CHUNK - size) * 8:]
        chunk = np.unpackbits(data[start:start + size], bitorder="little").view(bool)
        # The register entering a chunk acts as its first four bytes XORed in.
        carried = np.unpackbits(np.frombuffer(struct.pack("<I", reg), np.uint8), bitorder="little").view(bool)
        reg = int(np.bitwise_xor.reduce(rows[:size * 8][chunk])) ^ int(np.bitwise_xor.reduce(rows[:32][carried]))
        start += size
    return reg


def crc32c(data):
    """CRC-32C of `data` (bytes)."""
    if len(data) < _SHORT:
        return _loop(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    return _register(0xFFFFFFFF, np.frombuffer(data, np.uint8)) ^ 0xFFFFFFFF


def masked_crc32c(data):
    """The masked CRC-32C that TFRecord files store."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data):
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    header = struct.pack("<Q", len(data))
    return b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                     struct.pack("<I", masked_crc32c(data))))
