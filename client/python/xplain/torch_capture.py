"""Capture per-head attention probabilities and their gradients from a
PyTorch model, whatever computes its attention.

    cap = AttentionCapture(model)            # nn.MultiheadAttention and SDPA
    c = cap.run(x, target="pred")            # forward + backward
    pub.send(c.attn, grad=c.grad, target=c.target, y=c.prob[:, 1])

Three kinds of attention layer are captured (see the README for examples):

- torch.nn.MultiheadAttention: while a capture runs, its `forward` is
  called with need_weights=True and average_attn_weights=False, and it
  returns the per-head post-softmax matrix that actually multiplies the
  values (the caller still gets what it asked for).
- Modules that compute the probabilities themselves (softmax of the
  scores, then dropout, then the product with the values: rtdl's
  FT-Transformer, SAINT, TabTransformer): name them with `match=` (a
  module type, a name pattern or a predicate). While such a module runs
  inside a capture, every softmax it computes is recorded (through a
  TorchFunctionMode), and the one softmax over the last dimension is the
  probability tensor; `probs=` gets it some other way
  (an attribute name, or a function of the module and its output).
- `torch.nn.functional.scaled_dot_product_attention` (PyTorch 2.0 and
  later), called through that name: during a capture it is replaced by
  `sdpa_reference`, an exact equivalent that materialises the
  probabilities (same masks, causal flag and scale).

Each layer's probability tensor gets `retain_grad()`, and after the
backward pass of the target score its `.grad` is d y_t / d A. Each layer's
tensors are stored under that layer's index and read back by index:
nothing depends on the order in which backward visits the layers (the bug
of vit-explain issue 6, where gradients were appended in backward order
and so paired with the wrong layer). The index is the layer's place in
`layers=` when that is given, else the order of the calls in the forward
pass (layer 0 is the first attention the input goes through).

Samples of a batch never interact in attention or layer norm, so the
gradient of the sum over the batch of each sample's target score is each
sample's own gradient: one backward pass serves a whole batch. (Not so
with SAINT's intersample attention, which mixes the samples: there the
gradients are exact only for batches of one.)

Use the model in eval() mode (run() switches to it by default): in
training mode the probabilities are dropped out.
"""
from __future__ import annotations

import fnmatch
import math
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["AttentionCapture", "Captured", "capture", "sdpa_reference", "Match", "Probs", "Target"]

_MHA_OPTIONAL = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")

#: What `match=` accepts: a module type (or tuple of types), a glob over
#: qualified module names ("blocks.*.attention"), a compiled regex (full
#: match), a predicate f(name, module) -> bool, or a list of these (any).
Match = Union[type, Tuple[type, ...], str, "re.Pattern[str]", Callable[[str, torch.nn.Module], bool], list]
#: What `probs=` accepts: the name of an attribute the module sets to its
#: probability tensor, or a function f(module, output) -> tensor.
Probs = Union[str, Callable[[torch.nn.Module, Any], torch.Tensor]]
#: "pred" (each sample's predicted class), one class for all, or B classes.
Target = Union[str, int, Sequence[int], np.ndarray, torch.Tensor]

_SDPA = "scaled_dot_product_attention"
# Captures patch process-wide functions (softmax, SDPA) and restore them
# after: captures in different threads take turns, so that the restores
# never interleave.
_PATCH_LOCK = threading.RLock()
_SOFTMAX_SITES = ((torch, "softmax"), (torch.nn.functional, "softmax"), (torch.Tensor, "softmax"))
_MISSING = object()


class Captured:
    """Result of one capture.

    attn    numpy float32 [B, L, H, n, n] (None for a fused capture)
    grad    numpy float32 [B, L, H, n, n] or None (forward only, or fused)
    fused   for a fused capture (fused=True): an xplain.fuse.Fused of numpy
            arrays, the head means and statistics computed on the model's
            device before anything was copied to the host; else None
    target  numpy int64 [B] or None
    logits  numpy float32 [B, C] (model output)
    prob    numpy float32 [B, C] (softmax of logits; sigmoid for C == 1)
    score   numpy float32 [B] the differentiated target scores y_t
    """
    __slots__ = ("attn", "grad", "target", "logits", "prob", "score", "fused")

    def __init__(self, attn: Optional[np.ndarray], grad: Optional[np.ndarray], target: Optional[np.ndarray],
                 logits: np.ndarray, prob: np.ndarray, score: np.ndarray, fused: Any = None) -> None:
        self.attn, self.grad, self.target = attn, grad, target
        self.logits, self.prob, self.score = logits, prob, score
        self.fused = fused

    def target_prob(self) -> np.ndarray:
        """Each sample's probability of its target class, float32 [B] (for
        one output column: the sigmoid for target 1, one minus it for 0)."""
        B, C = self.prob.shape
        if C == 1:
            p = self.prob[:, 0]
            return np.where(self.target == 1, p, 1.0 - p).astype(np.float32)
        return self.prob[np.arange(B), self.target].astype(np.float32)


def sdpa_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                   is_causal: bool = False, scale: Optional[float] = None,
                   enable_gqa: bool = False, *,
                   _record: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention written out, with
    the probabilities materialised: softmax(q k^T * scale + bias) v.

    Same arguments and semantics: a bool attn_mask keeps the positions that
    are True, a float one is added to the scores; is_causal masks keys after
    the query (and excludes attn_mask, as PyTorch does); scale defaults to
    1/sqrt(E); enable_gqa repeats key/value heads. Dropout is refused: the
    probabilities it would explain are not the ones multiplying the values
    (call it with dropout_p=0.0 outside training)."""
    if dropout_p:
        raise ValueError("scaled_dot_product_attention called with dropout_p=%g during an "
                         "attention capture: pass dropout_p=0.0 when not training" % dropout_p)
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: attn_mask must not be set when is_causal=True")
    L, S = query.size(-2), key.size(-2)
    s = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = torch.matmul(query, key.transpose(-2, -1)) * s
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril(diagonal=0)
        scores = scores.masked_fill(keep.logical_not(), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if _record is not None:
        _record(probs)
    return torch.matmul(probs, value)



def _matcher(match: Match) -> Callable[[str, torch.nn.Module], bool]:
    if isinstance(match, list):
        fs = [_matcher(m) for m in match]
        return lambda name, mod: any(f(name, mod) for f in fs)
    if isinstance(match, type) or (isinstance(match, tuple) and all(isinstance(t, type) for t in match)):
        return lambda name, mod: isinstance(mod, match)
    if isinstance(match, str):
        return lambda name, mod: fnmatch.fnmatchcase(name, match)
    if isinstance(match, re.Pattern):
        return lambda name, mod: match.fullmatch(name) is not None
    if callable(match):
        return lambda name, mod: bool(match(name, mod))
    raise TypeError("match= takes a module type, a name pattern, a regex, a predicate "
                    "f(name, module) or a list of them, not %r" % (match,))


class AttentionCapture:
    """Attention and gradient capture for a PyTorch model.

    model   the torch.nn.Module
    layers  the attention modules in layer order (input side first); the
            index of each is its place in this list. Default: the modules
            `match` selects, indexed in the order they are called
    match   which modules are attention layers (see `Match`); default every
            torch.nn.MultiheadAttention. Matched modules that are not
            MultiheadAttention are captured through their softmax (or
            `probs`); matched modules must not contain one another
    probs   how to get a matched module's probability tensor (see `Probs`):
            it must be the tensor that multiplies the values (or the softmax
            output before an eval-mode dropout), shaped [B, H, n, n],
            [B*H, n, n] (batch-major) or [B, n, n]
    sdpa    capture calls of torch.nn.functional.scaled_dot_product_attention
            (in call order). None (default): when `layers` is not given and
            the function exists at the time of the capture; True: required;
            False: never
    """

    def __init__(self, model: torch.nn.Module, layers: Optional[Sequence[torch.nn.Module]] = None, *,
                 match: Optional[Match] = None, probs: Optional[Probs] = None,
                 sdpa: Optional[bool] = None) -> None:
        self.model = model
        self._explicit = layers is not None
        if layers is not None and match is not None:
            raise ValueError("give layers= or match=, not both")
        if layers is None:
            f = _matcher(match) if match is not None else \
                (lambda name, mod: isinstance(mod, torch.nn.MultiheadAttention))
            named = [(name, m) for name, m in model.named_modules() if f(name, m)]
            for a, ma in named:
                for b, mb in named:
                    if ma is not mb and any(x is mb for x in ma.modules()):
                        raise ValueError("matched attention modules nest: %r contains %r; "
                                         "match only the innermost" % (a or "<model>", b))
            layers = [m for _, m in named]
        self.layers = list(layers)
        for m in self.layers:
            if not isinstance(m, torch.nn.Module):
                raise TypeError("layers must be torch.nn.Module instances, got %s" % type(m).__name__)
        if isinstance(probs, str):
            attr = probs
            probs = lambda module, output: getattr(module, attr)  # noqa: E731
        elif probs is not None and not callable(probs):
            raise TypeError("probs= takes an attribute name or a function f(module, output)")
        self.probs = probs
        if sdpa and self._explicit:
            raise ValueError("sdpa=True numbers layers in call order; it cannot be combined with layers=")
        # None: decided at each capture (the function may be installed later).
        self.sdpa = None if sdpa is None and not self._explicit else bool(sdpa)
        if not self.layers and self.sdpa is False:
            what = "no torch.nn.MultiheadAttention module found in the model" if match is None \
                else "match= selected no module of the model"
            raise ValueError(what + " and sdpa=False; name the attention modules with match= or layers=")
        self._match_given = match is not None
        self._records: Dict[int, Tuple[Any, torch.Tensor]] = {}
        self._installed = False
        self._active = False     # inside run(): calls are recorded
        self._thread = None      # the thread running the capture
        self._inner = 0          # inside a captured module's forward

    # --- recording ----------------------------------------------------------

    def _recording(self) -> bool:
        return self._active and threading.get_ident() == self._thread

    def _record(self, index: Optional[int], owner: Any, used: torch.Tensor) -> None:
        # Which layer this is: its place in the explicit `layers` list, or
        # else the order of the calls in this pass.
        i = index if index is not None else len(self._records)
        if i in self._records or (isinstance(owner, torch.nn.Module)
                                  and any(o is owner for o, _ in self._records.values())):
            raise RuntimeError("an attention layer was called twice in one forward pass; "
                               "pass layers= explicitly (one module per layer)")
        if used.requires_grad:
            used.retain_grad()
        self._records[i] = (owner, used)

    def _wrap_mha(self, index: Optional[int], module: torch.nn.Module) -> Callable[..., Any]:
        original = type(module).forward

        def forward(*args, **kwargs):
            # Arguments after (query, key, value) may come positionally.
            for name, value in zip(_MHA_OPTIONAL, args[3:]):
                kwargs[name] = value
            args = args[:3]
            if not self._recording() or self._inner:
                return original(module, *args, **kwargs)
            want_weights = kwargs.get("need_weights", True)
            want_avg = kwargs.get("average_attn_weights", True)
            kwargs["need_weights"] = True
            kwargs["average_attn_weights"] = False
            self._inner += 1
            try:
                out, w = original(module, *args, **kwargs)
            finally:
                self._inner -= 1
            # MultiheadAttention returns a view ([B, H, n, n]) of the
            # [B*H, n, n] probabilities that multiplied the values; the
            # gradient reaches that base tensor, not the view.
            self._record(index, module, w._base if w._base is not None else w)
            if not want_weights:
                return out, None
            # What the caller asked for: head-averaged unless it said not.
            return out, (w.mean(dim=-3) if want_avg else w)
        return forward

    def _wrap_module(self, index: Optional[int], module: torch.nn.Module) -> Callable[..., Any]:
        original = type(module).forward

        def forward(*args, **kwargs):
            if not self._recording() or self._inner:
                return original(module, *args, **kwargs)
            self._inner += 1
            try:
                if self.probs is not None:
                    out = original(module, *args, **kwargs)
                    p = self.probs(module, out)
                    if not isinstance(p, torch.Tensor):
                        raise RuntimeError("probs= returned %s for %s, not a tensor"
                                           % (type(p).__name__, type(module).__name__))
                else:
                    seen: List[Tuple[torch.Tensor, Any, Tuple[Any, ...]]] = []
                    with _SoftmaxSpy(seen, self._thread):
                        out = original(module, *args, **kwargs)
                    last = [t for t, dim, _ in seen if t.dim() >= 3 and dim in (-1, t.dim() - 1)]
                    if len(last) != 1:
                        raise RuntimeError(
                            "%s: %d softmax calls over the last dimension of a >= 3-d tensor in its "
                            "forward (of %d softmax calls), expected exactly one; give probs= to say "
                            "which tensor holds the attention probabilities"
                            % (type(module).__name__, len(last), len(seen)))
                    p = last[0]
            finally:
                self._inner -= 1
            self._record(index, module, p)
            return out
        return forward

    def _sdpa(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                         is_causal=False, scale=None, enable_gqa=False):
            if not self._recording():
                kw = {}
                if scale is not None:
                    kw["scale"] = scale
                if enable_gqa:
                    kw["enable_gqa"] = enable_gqa
                return original(query, key, value, attn_mask, dropout_p, is_causal, **kw)
            # Inside a captured module the module's own softmax spy records
            # the probabilities (the reference calls torch.softmax, spied).
            rec = None if self._inner else (lambda p: self._record(None, _SDPA, p))
            return sdpa_reference(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                  enable_gqa, _record=rec)
        scaled_dot_product_attention.__doc__ = sdpa_reference.__doc__
        return scaled_dot_product_attention

    # --- installing ---------------------------------------------------------

    def install(self) -> None:
        """Wrap the layers' forward (done by run(), or once for many runs by
        `with`). Outside run() the wrapped layers behave exactly as before."""
        if not self._installed:
            for i, m in enumerate(self.layers):
                wrap = self._wrap_mha if isinstance(m, torch.nn.MultiheadAttention) else self._wrap_module
                m.forward = wrap(i if self._explicit else None, m)
            self._installed = True

    def remove(self) -> None:
        """Restore the layers' own forward."""
        if self._installed:
            for m in self.layers:
                del m.forward
            self._installed = False

    def __enter__(self) -> "AttentionCapture":
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # --- running ------------------------------------------------------------

    def run(self, *inputs: Any, target: Target = "pred", grad: bool = True,
            eval_mode: bool = True, fused: Union[bool, str] = False, **kwargs: Any) -> Captured:
        """Run the model on `inputs` (batched, and keyword `kwargs`) and
        capture every attention layer.

        target   "pred" (default): each sample's predicted class; an int for
                 all samples; or a sequence of B classes
        grad     False: forward only (attn without gradients)
        eval_mode   put the model in eval() for the capture (restored after)
        fused    compute the fused form (xplain.fuse) on the model's device
                 and copy only that to the host: Captured.fused, no attn;
                 "f16": its head means rounded to float16 there (for an
                 f16 wire)

        The score differentiated for sample b is logits[b, target[b]] of the
        model's output (its first element when it returns a tuple); for a
        model with a single output column it is the logit for target 1 and
        its negation for target 0. The parameters' .grad are left alone."""
        was_training = self.model.training
        if eval_mode:
            self.model.eval()
        try:
            return self._capture(lambda: self.model(*inputs, **kwargs), target, grad, fused=fused)[0]
        finally:
            if eval_mode and was_training:
                self.model.train()

    def _capture(self, call: Callable[[], Any], target: Target, grad: bool,
                 keep_graph: bool = False, fused: bool = False) -> Tuple[Captured, Any]:
        """One capture around call() (the model's forward): the Captured
        tensors and the forward's own output."""
        with _PATCH_LOCK:
            return self._capture_locked(call, target, grad, keep_graph, fused)

    def _capture_locked(self, call: Callable[[], Any], target: Target, grad: bool,
                        keep_graph: bool, fused: bool = False) -> Tuple[Captured, Any]:
        was_installed = self._installed
        self.install()
        self._records = {}
        self._active, self._thread = True, threading.get_ident()
        F = torch.nn.functional
        sdpa_before = vars(F).get(_SDPA, _MISSING) if self.sdpa is not False else _MISSING
        try:
            if self.sdpa and sdpa_before is _MISSING:
                raise RuntimeError("sdpa=True, but torch.nn.functional.scaled_dot_product_attention "
                                   "does not exist in this PyTorch (%s); it came with 2.0" % torch.__version__)
            if sdpa_before is not _MISSING:
                setattr(F, _SDPA, self._sdpa(sdpa_before))
            # Grad mode stays on even for a forward-only capture: with grad
            # disabled nn.TransformerEncoderLayer takes a fused fast path
            # that never calls MultiheadAttention.forward.
            with torch.enable_grad():
                out = call()
                first = out[0] if isinstance(out, (tuple, list)) else out
                logits = first if first.dim() == 2 else first.reshape(first.shape[0], -1)
                if self._explicit:
                    missing = [i for i in range(len(self.layers)) if i not in self._records]
                else:
                    missing = ["%s" % type(m).__name__ for m in self.layers
                               if not any(o is m for o, _ in self._records.values())]
                if missing:
                    raise RuntimeError("attention layers %s were not called in this pass" % missing)
                if not self._records:
                    raise RuntimeError(
                        "no attention was captured: %s, and %s; name the attention modules with "
                        "match= or layers=" % (
                            "match= selected no module" if self._match_given
                            else "the model has no torch.nn.MultiheadAttention",
                            "no scaled_dot_product_attention call was seen" if sdpa_before is not _MISSING
                            else "this PyTorch (%s) has no scaled_dot_product_attention" % torch.__version__))
                B, C = logits.shape
                if isinstance(target, str):
                    if target != "pred":
                        raise ValueError("target must be 'pred', a class or B classes, not %r" % target)
                    t = (logits[:, 0] > 0).long() if C == 1 else logits.argmax(dim=1)
                else:
                    if isinstance(target, torch.Tensor):
                        target = target.detach().cpu().numpy()
                    t = torch.as_tensor(np.broadcast_to(np.asarray(target), (B,)).copy(),
                                        dtype=torch.long, device=logits.device)
                if C == 1:
                    score = torch.where(t == 1, logits[:, 0], -logits[:, 0])
                else:
                    score = logits.gather(1, t[:, None])[:, 0]
                used = [self._records[i][1] for i in range(len(self._records))]
                shapes = [_bhnn_shape(u, B, i) for i, u in enumerate(used)]
                if len(set(shapes)) != 1:
                    raise RuntimeError("attention layers differ in shape [B, H, n, n]: %s" % shapes)
                G = None
                if grad:
                    if not all(u.requires_grad for u in used):
                        raise RuntimeError("attention weights do not require grad "
                                           "(model parameters frozen and inputs without grad?)")
                    # Gradients go only to the retained attention tensors
                    # (inputs=): the parameters' .grad are left as they were.
                    score.sum().backward(inputs=used, retain_graph=keep_graph)
                    for i, u in enumerate(used):
                        if u.grad is None:
                            raise RuntimeError("attention layer %d got no gradient from the "
                                               "target score (not on the path to the output?)" % i)
                    # Layer i's gradient is read from layer i's own tensor.
                    if fused:
                        G_dev = [u.grad.detach().reshape(s[0], s[1], s[2], s[3]) for u, s in zip(used, shapes)]
                    else:
                        G = np.stack([_np(u.grad, s) for u, s in zip(used, shapes)], axis=1)
                    for u in used:
                        u.grad = None
                fz = None
                if fused:
                    # On the model's device: only the fused arrays, H times
                    # smaller than the heads, are copied to the host.
                    from .fuse import fuse_torch_layers
                    A_dev = [u.detach().reshape(s) for u, s in zip(used, shapes)]
                    fz = fuse_torch_layers(A_dev, G_dev if grad else None, half=fused == "f16").to_host()
                    A = None
                else:
                    A = np.stack([_np(u, s) for u, s in zip(used, shapes)], axis=1)
                lg = logits.detach().cpu().float()
                prob = torch.sigmoid(lg) if C == 1 else torch.softmax(lg, dim=1)
                return (Captured(A, G, t.detach().cpu().numpy().astype(np.int64),
                                 lg.numpy(), prob.numpy(), score.detach().cpu().float().numpy(), fz), out)
        finally:
            if sdpa_before is not _MISSING:
                setattr(F, _SDPA, sdpa_before)
            self._active, self._thread = False, None
            self._records = {}
            if not was_installed:
                self.remove()


_TorchFunctionMode = getattr(torch.overrides, "TorchFunctionMode", None)


class _SoftmaxSpy:
    """While active, every softmax the current thread computes appends
    (output, dim, shape) to `seen`.

    Through a TorchFunctionMode where PyTorch has one (1.12 and later): it
    sees torch.softmax, F.softmax, Tensor.softmax and nn.Softmax however
    the model refers to them (`from torch import softmax` too), and only in
    this thread. Else torch.softmax, F.softmax and Tensor.softmax are
    patched for the duration (names bound before are not seen); F.softmax
    calls Tensor.softmax, so a nested call is not recorded twice."""

    use_mode = _TorchFunctionMode is not None

    def __init__(self, seen: list, thread: Optional[int]) -> None:
        self.seen, self.thread = seen, thread
        self.saved: list = []
        self.depth = 0
        self.mode: Any = None

    def _note(self, out: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        if isinstance(out, torch.Tensor):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            self.seen.append((out, dim, tuple(out.shape)))

    def _spy(self, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        spy = self

        def softmax(*args, **kwargs):
            if spy.depth or threading.get_ident() != spy.thread:
                return original(*args, **kwargs)
            spy.depth += 1
            try:
                out = original(*args, **kwargs)
            finally:
                spy.depth -= 1
            spy._note(out, args, kwargs)
            return out
        return softmax

    def __enter__(self) -> "_SoftmaxSpy":
        if self.use_mode:
            spy = self

            class Mode(_TorchFunctionMode):   # type: ignore[misc, valid-type]
                def __torch_function__(self, func, types, args=(), kwargs=None):
                    kwargs = kwargs or {}
                    out = func(*args, **kwargs)
                    if getattr(func, "__name__", None) == "softmax":
                        spy._note(out, args, kwargs)
                    return out
            self.mode = Mode()
            self.mode.__enter__()
            return self
        for owner, name in _SOFTMAX_SITES:
            before = vars(owner).get(name, _MISSING)
            self.saved.append((owner, name, before))
            setattr(owner, name, self._spy(getattr(owner, name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.mode is not None:
            self.mode.__exit__(*exc)
            self.mode = None
        for owner, name, before in reversed(self.saved):
            if before is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, before)
        self.saved = []


def _bhnn_shape(t: torch.Tensor, B: int, layer: int) -> Tuple[int, int, int, int]:
    if t.dim() < 3 or t.shape[0] % B or t.numel() % (B * t.shape[-1] * t.shape[-2]):
        raise RuntimeError("layer %d: attention probabilities of shape %s do not fit a batch of %d "
                           "as [B, H, n, n], [B*H, n, n] or [B, n, n]" % (layer, tuple(t.shape), B))
    n, m = t.shape[-2], t.shape[-1]
    if n != m:
        raise RuntimeError("layer %d: attention probabilities of shape %s are not square: "
                           "the layer computed %d query rows for %d keys, and xplaind needs "
                           "every token's row. rtdl's last_layer_query_idx does this: set it to "
                           "None for the capture (the outputs do not change)" % (layer, tuple(t.shape), n, m))
    return (B, t.numel() // (B * n * n), n, n)


def _np(t: torch.Tensor, shape: Tuple[int, ...]) -> np.ndarray:
    return t.detach().reshape(shape).cpu().float().numpy()


def capture(model: torch.nn.Module, *inputs: Any, target: Target = "pred", grad: bool = True,
            layers: Optional[Sequence[torch.nn.Module]] = None, match: Optional[Match] = None,
            probs: Optional[Probs] = None, sdpa: Optional[bool] = None, fused: bool = False,
            **kwargs: Any) -> Captured:
    """One-shot AttentionCapture(model, layers, match=, probs=, sdpa=).run(*inputs, ...)."""
    return AttentionCapture(model, layers, match=match, probs=probs, sdpa=sdpa).run(
        *inputs, target=target, grad=grad, fused=fused, **kwargs)
