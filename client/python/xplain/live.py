"""A live model's scored batches published with their explanation inputs.

    pub = xplain.Publisher("ftt", connect="tcp://127.0.0.1:5556", tokens=names + ["CLS"], cls=len(names))
    live = xplain.live.explain_forward(model, pub, sample=0.1)
    ...
    probs = model(x)                 # as before; 1 batch in 10 is also published
    live.close()                     # sends what is queued, restores model.forward

What a sampled batch costs the model's thread: its forward runs inside an
AttentionCapture (probabilities materialised, gradients retained) followed
by one backward pass of the target scores to the attention tensors. The
encoding and sending happen in a sender thread behind a bounded queue;
when the queue is full the batch is dropped and counted, so the model
never waits for the network.

The target: each sample's predicted class (argmax of the output's logits;
for a single output column, class 1 when the logit is positive), unless
`target=` says otherwise; the differentiated score is that class's logit
(AttentionCapture.run). `y` sent with each trade is the model's
probability of the target class (softmax of the logits, sigmoid for one
column), or of class k with `y=k`.

The model must be in eval() mode: a batch scored in training mode is
passed through uncaptured (and counted in `training`).

The wire form: per-head attention and gradients (contract v1, as
Publisher.send), or, when the publisher is fused (Publisher(fused=True),
or fused=True here), the fused form computed on the model's device inside
the capture: only the head means, H times smaller, are copied to the
host, and the sender thread packs them.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from .torch_capture import AttentionCapture, Captured, Target

__all__ = ["explain_forward", "LiveExplainer"]

Ids = Callable[..., Sequence[Union[int, str]]]


class LiveExplainer:
    """The handle explain_forward() returns; see its documentation.

    counts   dict: scored (batches through forward), sampled, training
             (scored in training mode, not captured), queued, dropped (queue
             full), sent, failed (capture or send raised; last_error)
    """

    def __init__(self, model: torch.nn.Module, publisher: Any, *, sample: float = 1.0,
                 queue_size: int = 64, target: Target = "pred", y: Union[str, int, None] = "target",
                 ids: Optional[Ids] = None, capture: Optional[AttentionCapture] = None,
                 seed: Optional[int] = None, strict: bool = False, fused: Optional[bool] = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("sample must be a rate in [0, 1], not %r" % (sample,))
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if "forward" in vars(model):
            raise RuntimeError("model.forward is already replaced on this instance "
                               "(another explain_forward still open?)")
        self.model, self.publisher = model, publisher
        self.sample, self.target, self.y, self.ids, self.strict = sample, target, y, ids, strict
        self.fused: Union[bool, str] = bool(getattr(publisher, "fused", False)) if fused is None else bool(fused)
        if self.fused and getattr(publisher, "dtype", None) == "f16":
            self.fused = "f16"      # round to half on the device: half the bytes to copy
        self.capture = capture if capture is not None else AttentionCapture(model)
        self.counts: Dict[str, int] = dict(scored=0, sampled=0, training=0, queued=0,
                                           dropped=0, sent=0, failed=0)
        self.last_error: Optional[BaseException] = None
        self._rng = random.Random(seed)
        self._queue: deque = deque()
        self._queue_size = queue_size
        self._cv = threading.Condition()
        self._busy = 0               # items taken by the sender, not yet sent
        self._closing = False
        self._original = type(model).forward
        self.capture.install()
        model.forward = self._forward
        self._thread = threading.Thread(target=self._sender, name="xplain-live", daemon=True)
        self._thread.start()

    # --- the model's thread ---------------------------------------------------

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["scored"] += 1
        if self._closing or not (self.sample >= 1.0 or self._rng.random() < self.sample):
            return self._original(self.model, *args, **kwargs)
        if self.model.training:
            self.counts["training"] += 1
            return self._original(self.model, *args, **kwargs)
        self.counts["sampled"] += 1
        grad_on = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        try:
            if torch.is_inference_mode_enabled():
                # Inference tensors cannot be saved for backward: leave the
                # mode, and copy the inputs out of it.
                with torch.inference_mode(False):
                    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                    c, out = self.capture._capture(lambda: self._original(self.model, *args, **kwargs),
                                                   self.target, True, fused=self.fused)
            else:
                c, out = self.capture._capture(lambda: self._original(self.model, *args, **kwargs),
                                               self.target, True, keep_graph=grad_on, fused=self.fused)
            ids = list(self.ids(*args, **kwargs)) if self.ids is not None else None
        except Exception as e:              # a capture that fails never fails the model
            self.counts["failed"] += 1
            self.last_error = e
            if self.strict:
                raise
            return self._original(self.model, *args, **kwargs)
        self._enqueue((c, ids, time.time_ns()))
        return out if grad_on else _detach(out)

    def _enqueue(self, item: Any) -> None:
        with self._cv:
            if len(self._queue) >= self._queue_size:
                self.counts["dropped"] += 1
                return
            self._queue.append(item)
            self.counts["queued"] += 1
            self._cv.notify_all()

    # --- the sender thread ----------------------------------------------------

    def _sender(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy += 1
            try:
                self.publish(*item)
                with self._cv:
                    self.counts["sent"] += 1
            except Exception as e:
                with self._cv:
                    self.counts["failed"] += 1
                    self.last_error = e
            finally:
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def publish(self, c: Captured, ids: Optional[Sequence[Union[int, str]]], ts: int) -> None:
        """Send one captured batch (called in the sender thread only)."""
        if self.y is None:
            y = None
        elif self.y == "target":
            y = c.target_prob()
        else:
            y = c.prob[:, int(self.y)]
        if c.fused is not None:
            self.publisher.send(c.fused, ids=ids, target=c.target, y=y, ts=ts)
        else:
            self.publisher.send(c.attn, grad=c.grad, ids=ids, target=c.target, y=y, ts=ts)

    # --- control --------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued batch is sent (True) or `timeout` seconds
        passed (False)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Restore model.forward, send what is queued (for up to `timeout`
        seconds; True when all of it went) and stop the sender thread. The
        publisher stays open: it is the caller's."""
        if "forward" in vars(self.model) and vars(self.model)["forward"] == self._forward:
            del self.model.forward
        self.capture.remove()
        done = self.flush(timeout)
        with self._cv:
            self._closing = True
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout)
        return done

    def __enter__(self) -> "LiveExplainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def explain_forward(model: torch.nn.Module, publisher: Any, *, sample: float = 1.0,
                    queue_size: int = 64, target: Target = "pred", y: Union[str, int, None] = "target",
                    ids: Optional[Ids] = None, capture: Optional[AttentionCapture] = None,
                    seed: Optional[int] = None, strict: bool = False,
                    fused: Optional[bool] = None) -> LiveExplainer:
    """Wrap `model.forward` so that scored batches are published with their
    explanation inputs; returns the LiveExplainer (close() unwraps).

    publisher   an xplain.Publisher (with tokens= and cls= set); from now on
                only the sender thread uses it
    sample      the share of forward calls (batches) captured, drawn at
                random (seed=); 1.0: every batch
    queue_size  captured batches waiting for the sender; a batch that finds
                the queue full is dropped and counted (counts["dropped"])
    target      "pred" (default: each sample's predicted class), one class,
                or B classes: the class whose logit is differentiated
    y           "target": the probability of the target class (default); an
                int k: the probability of class k; None: no y
    ids         f(*args, **kwargs) -> B trade ids, called with the forward's
                arguments; default: the publisher's running counter
    capture     an AttentionCapture for the model (default: AttentionCapture(model),
                i.e. nn.MultiheadAttention and scaled_dot_product_attention;
                give one with match= for models with their own attention)
    strict      re-raise a failed capture in the model's thread (default:
                count it, keep last_error, and return the plain forward)
    fused       fuse on the model's device and send the fused form
                (default: when the publisher was made with fused=True)

    The wrapped forward returns what the model returns; for a sampled batch
    that is the output of the capture's forward, detached when gradients
    were disabled by the caller (no_grad, inference_mode)."""
    return LiveExplainer(model, publisher, sample=sample, queue_size=queue_size, target=target, y=y,
                         ids=ids, capture=capture, seed=seed, strict=strict, fused=fused)


def _detach(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, tuple):
        return tuple(_detach(o) for o in out)
    if isinstance(out, list):
        return [_detach(o) for o in out]
    return out
