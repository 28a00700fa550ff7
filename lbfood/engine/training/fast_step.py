"""A compiled training step for the fixed-shape, device-resident path (issue 13): no launch-bound steps.

`CompiledStep` runs what `train.train_step` runs (forward, CE, the loss hook's term and statistics,
backward, the SGD update) as one `torch.compile`d function, and on CUDA as CUDA graphs
(mode="reduce-overhead"): a step becomes a few graph replays instead of hundreds of kernel launches
and their Python. It needs every batch to have the same shape, which the device-resident loader gives
when it drops the ragged last batch (`DeviceLoader.drop_last`, on for training). Nothing in it waits
for the device: it returns detached device tensors, as `train_step` does. On CUDA these are the graph's
output buffers, valid until the next call (the loop adds them to its sums at once).

The learning rate lives in a device tensor per parameter group, so a new value each step (the cosine
schedule) is a copy into that tensor, not a recompilation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lbfood.engine.runtime import Runtime


class CompiledStep:
    """`step(x, y) -> (ce, logits, hook stats)` for a fixed model, optimizer and hook, compiled once."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime, hook=None,
                 label_smoothing: float = 0.0, *, backend: str = "inductor", mode: str | None = None):
        self.model, self.optimizer, self.rt, self.hook = model, optimizer, rt, hook
        self.label_smoothing = label_smoothing
        self.cuda = rt.device.type == "cuda"
        if mode is None:
            mode = "reduce-overhead" if self.cuda else "default"
        self._lr = [torch.tensor(float(g["lr"]), device=rt.device) for g in optimizer.param_groups]
        # SGD creates its momentum buffers at the first step (buf = grad); zeros now give the same first
        # step (0·momentum + grad, no dampening) and spare a second compilation for the changed state.
        for g in optimizer.param_groups:
            if g.get("momentum", 0) and not g.get("dampening", 0):
                for p in g["params"]:
                    optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        self._fn = torch.compile(self._step, backend=backend, mode=mode)

    def _step(self, x: torch.Tensor, y: torch.Tensor):
        parts: dict[str, torch.Tensor] = {}
        with self.rt.autocast():
            logits, fmap = self.model(x, with_features=True)
            ce = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            loss = ce
            if self.hook is not None:
                extra, parts = self.hook(x, y, logits, fmap)
                loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return ce.detach().float(), logits.detach(), {k: v.detach().float() for k, v in parts.items()}

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        for g, t in zip(self.optimizer.param_groups, self._lr, strict=True):
            if not isinstance(g["lr"], torch.Tensor):  # the loop sets a float each step
                t.fill_(g["lr"])
                g["lr"] = t
        if self.cuda:
            # A new iteration: outputs of the previous replay may be overwritten (CUDA graph trees).
            torch.compiler.cudagraph_mark_step_begin()
        return self._fn(x, y)


def applies(loader, rt: Runtime, distributed: bool) -> bool:
    """The compiled step's conditions: one process, no GradScaler (fp16), fixed-shape device-resident batches."""
    from lbfood.engine.data.loaders import DeviceLoader

    return (isinstance(loader, DeviceLoader) and loader.drop_last and not distributed
            and not rt.use_scaler and rt.device.type in ("cuda", "cpu"))


def compiled_step(enabled: bool, loader, model, optimizer, rt: Runtime, hook, label_smoothing: float,
                  distributed: bool) -> CompiledStep | None:
    """The compiled step if `--compile` is on and the run meets `applies`; None: the loop's eager step."""
    if not (enabled and applies(loader, rt, distributed)):
        return None
    return CompiledStep(model, optimizer, rt, hook, label_smoothing)
