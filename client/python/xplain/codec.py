"""Tensor encodings of contract v1 (proto/ingest.md): little-endian f32,
IEEE binary16 (f16) and bfloat16 (bf16), C order, as msgpack `bin`.

Conversions to the half types round to nearest, ties to even, exactly as the
daemon's core/half.c does, so a tensor encoded here and one encoded by the C
publisher are bit-identical. Decoding is exact (every f16 and bf16 value is a
float32 value).
"""
import numpy as np

DTYPES = ("f32", "f16", "bf16")
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 array of bfloat16 bits (round to nearest even).

    NaN stays a (quiet) NaN; values that round past the largest bfloat16
    become +-Inf, as IEEE rounding says."""
    x = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    nan = (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    lsb = (x >> np.uint32(16)) & np.uint32(1)
    # uint32 arithmetic wraps only for NaN payloads, which are replaced below.
    r = ((x + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    if nan.any():
        r[nan] = ((x[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r


def bf16_bits_to_f32(bits):
    """uint16 array of bfloat16 bits -> float32 array (exact)."""
    b = np.asarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to(a, dtype):
    """The float32 values the daemon will see after `encode(a, dtype)`."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.copy()
    if dtype == "f16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a)).reshape(a.shape)
    raise ValueError("dtype must be one of %s, not %r" % (", ".join(DTYPES), dtype))


def encode(a, dtype):
    """Array -> bytes of the contract encoding `dtype` (little-endian, C order).

    The input is first converted to float32 (float64 input is rounded once
    to float32, then to the half type: the same path as a C publisher that
    holds float buffers)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "f32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "f16":
        # numpy's float32 -> float16 cast rounds to nearest even and
        # overflows to Inf, like half_f32_to_f16.
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(a.astype("<f2")).tobytes()
    if dtype == "bf16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError("dtype must be one of %s, not %r" % (", ".join(DTYPES), dtype))


def decode(buf, dtype, shape=None):
    """Bytes of a contract encoding -> float32 array (optionally reshaped).

    ValueError, naming what is wrong, when `buf` is not bytes holding whole
    elements of `dtype`, or they do not fill `shape` (a message's bin
    is never trusted to match its declared shape)."""
    if dtype not in DTYPES:
        raise ValueError("dtype must be one of %s, not %r" % (", ".join(DTYPES), dtype))
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise ValueError("%s data must be bytes, not %s" % (dtype, type(buf).__name__))
    size = ITEMSIZE[dtype]
    if len(buf) % size:
        raise ValueError("%d bytes are not whole %s elements" % (len(buf), dtype))
    if dtype == "f32":
        a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
    elif dtype == "f16":
        a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
    else:
        a = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
    if shape is None:
        return a
    try:
        return a.reshape(shape)
    except (TypeError, ValueError) as e:
        raise ValueError("%d %s elements do not fill shape %r (%s)" % (a.size, dtype, shape, e)) from None


def to_numpy(t):
    """numpy array or torch tensor (any device, any float dtype, with or
    without grad) -> numpy float32 array. torch is never imported here."""
    if hasattr(t, "detach") and hasattr(t, "cpu"):
        t = t.detach().cpu()
        if hasattr(t, "float"):
            t = t.float()    # bf16/f16 tensors: exact widening
        return t.numpy()
    return np.asarray(t, dtype=np.float32)
