"""xplain: Python side of xplaind's wire contract v1 (proto/).

Pure Python on pyzmq, msgpack and numpy; torch is imported only when the
PyTorch helper is used.

    from xplain import Publisher, Subscriber, Client
    from xplain.torch_capture import AttentionCapture     # needs torch
    from xplain.live import explain_forward                # needs torch

Publisher    live model -> daemon: attention/gradient tensors (attn/<model>),
             per head or fused (fused=True), micro-batched (batch=, delay=),
             optionally split over shard daemons by trade id (shards=N)
fuse         the fused form: per layer the head means the daemon needs
Subscriber   daemon -> you: per-trade explanations (xpl/), glob/drift/heads
GlobalView   one model's global state, kept current by the Clone pattern
Client       the query ops (ping, models, schema, stats, trade, global,
             drift, baseline, reference); QueryError / QueryTimeout on failure
AttentionCapture   attention probabilities and gradients from a PyTorch
             model: nn.MultiheadAttention, modules with their own softmax
             (match=), scaled_dot_product_attention
explain_forward    wraps a live model's forward: sampled scored batches
             are published from a sender thread

For a daemon running with --curve, each of them takes curve_secret= (this
client's secret certificate, or raw Z85 key) and server_public= (the
daemon's public certificate, or key): see xplain.curve.
"""
from .codec import DTYPES, decode, encode, round_to, f32_to_bf16_bits, bf16_bits_to_f32
from .publisher import Publisher
from .fuse import Fused, fuse
from .shard import shard_of
from .query import Client, QueryError, QueryTimeout, XplainError
from .subscriber import Explanation, Subscriber, Update
from .clone import GlobalView
from .launch import Daemon, find_xplaind, free_tcp_endpoint
from .curve import CertificateError, Curve, load_certificate

# The package version, and the daemon's: tests/py/test_python_package.py
# checks it equals project(xplain VERSION ...) in the top CMakeLists.txt.
# pyproject.toml reads it from here.
__version__ = "0.1.0"

__all__ = ["Publisher", "Fused", "fuse", "Subscriber", "Client", "GlobalView", "Explanation", "Update",
           "QueryError", "QueryTimeout", "XplainError", "AttentionCapture", "capture", "Captured",
           "explain_forward", "LiveExplainer", "sdpa_reference",
           "Daemon", "find_xplaind", "free_tcp_endpoint", "shard_of",
           "CertificateError", "Curve", "load_certificate",
           "DTYPES", "encode", "decode", "round_to", "f32_to_bf16_bits", "bf16_bits_to_f32"]


def __getattr__(name: str) -> object:
    # The PyTorch helpers, loaded (and torch imported) on first use.
    if name in ("AttentionCapture", "capture", "Captured", "sdpa_reference"):
        from . import torch_capture
        return getattr(torch_capture, name)
    if name in ("explain_forward", "LiveExplainer"):
        from . import live
        return getattr(live, name)
    raise AttributeError("module 'xplain' has no attribute %r" % name)
