"""Standard normal draws for programming: one seeded generator per tensor, handed out as a fixed-block stream.

A ``NormalStream`` draws N(0, 1) float32 numbers from its generator in blocks of a fixed size and hands them out
in order, whatever sizes callers ask for: the k-th number handed out depends only on the generator's seed and
device, the block size and the torch version. On the CPU (where one ``torch.randn`` call runs on one core) the
blocks are drawn ahead by a background thread, so the arithmetic of programming runs on the other core while
the generator works: the same numbers come out either way (``prefetch`` changes speed, never values).
"""

from __future__ import annotations

import queue
import threading

import torch
from torch import Tensor

CPU_BLOCK = 1 << 18  # draws per block on the CPU (1 MiB of float32: a few ms of torch.randn)
CUDA_BLOCK = 1 << 24
_QUEUE_DEPTH = 4


def block_size(device: torch.device, bound: int | None = None) -> int:
    """The block size of a stream on ``device`` that will hand out at most ``bound`` numbers."""
    block = CUDA_BLOCK if device.type != "cpu" else CPU_BLOCK
    return max(16, min(block, bound)) if bound else block


class NormalStream:
    """N(0, 1) float32 draws from ``generator`` on its device, in order (see the module docstring).

    ``bound``: the most numbers this stream will hand out (sets a smaller block for small tensors, so little is
    drawn in vain). ``prefetch``: draw blocks ahead in a background thread (default: on the CPU when the stream
    spans more than two blocks). ``drawn`` counts the numbers handed out. Use it as a context (or ``close()``).
    """

    def __init__(self, generator: torch.Generator, bound: int | None = None, prefetch: bool | None = None):
        self.generator, self.device = generator, generator.device
        self.block = block_size(self.device, bound)
        self.drawn = 0
        self._current: Tensor = torch.empty(0, device=self.device)
        self._pos = 0
        if prefetch is None:
            prefetch = self.device.type == "cpu" and bound is not None and bound > 2 * self.block
        self._queue: queue.Queue | None = None
        if prefetch:
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=_QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._produce, name="romer-normal-draws", daemon=True)
            self._thread.start()

    def _draw_block(self) -> Tensor:
        return torch.randn(self.block, generator=self.generator, device=self.device, dtype=torch.float32)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._draw_block()
                while not self._stop.is_set():
                    try:
                        self._queue.put(block, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def _next_block(self) -> Tensor:
        if self._queue is None:
            return self._draw_block()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def take(self, n: int) -> Tensor:
        """The next ``n`` numbers (float32, 1-D, on the stream's device; a view into a block when it fits)."""
        self.drawn += n
        if self._pos + n <= self._current.numel():
            out = self._current[self._pos:self._pos + n]
            self._pos += n
            return out
        parts, need = [self._current[self._pos:]], n - (self._current.numel() - self._pos)
        while need > 0:
            self._current = self._next_block()
            piece = self._current[:need]
            parts.append(piece)
            self._pos = piece.numel()
            need -= piece.numel()
        return torch.cat(parts)

    def normal(self, shape) -> Tensor:
        """The next numbers as a tensor of ``shape``."""
        shape = tuple(shape)
        count = 1
        for s in shape:
            count *= s
        return self.take(count).view(shape)

    def close(self) -> None:
        if self._queue is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._queue = None

    def __enter__(self) -> "NormalStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - a safety net; programming closes its streams
        try:
            self.close()
        except Exception:
            pass


NormalSource = torch.Generator | NormalStream


def as_stream(source: NormalSource, bound: int | None = None) -> NormalStream:
    """``source`` itself when it is a stream, else a new stream over the generator (close it when done)."""
    if isinstance(source, NormalStream):
        return source
    if not isinstance(source, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(source).__name__}")
    return NormalStream(source, bound)
