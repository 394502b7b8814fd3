"""Copies of expert records between host memory (dram) and the compute device (hbm).

On CUDA every copy runs on a side stream and is ordered by events, the standard PyTorch recipe:

- host -> device: the side stream first waits for the event recorded when the compute stream
  last released the destination buffer (so a kernel still reading the old expert is not
  overwritten), copies from pinned memory with ``non_blocking=True`` and records a *ready* event;
  the consumer makes the compute stream ``wait_event(ready)`` before use. The pinned source must
  stay untouched until ``ready`` completes: the store synchronizes on it before reusing the host
  buffer.
- device -> host: the side stream waits for the release event (the learner's in-place update is
  done), copies into pinned memory and records an event that the I/O thread synchronizes on
  before the host copy is read (e.g. written to NVMe).

The store's buffers are preallocated pools that are never freed, so their lifetime across
streams is governed by these events; ``Tensor.record_stream`` (which tells the caching allocator
not to reuse a *freed* block too early) has nothing to protect here.

On CPU the same calls are synchronous single-threaded memcpys (``numpy.copyto`` of the raw bytes,
which releases the GIL) in the calling I/O thread; the events are ``None``. Not ``Tensor.copy_``:
its intra-op thread pool turns a 512 KiB copy from 0.1 ms into 10 ms when the cores are busy
(measured on the 2-core machine under load), and a memory copy gains nothing from it anyway.
"""

from __future__ import annotations

import numpy as np
import torch

from storage.slab import Record, bytes_array


class Mover:
    """Record copies for one compute device (CUDA side stream, or synchronous on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def copy(self, src: Record, dst: Record, after: "torch.cuda.Event | None" = None) -> "torch.cuda.Event | None":
        """Copy every tensor of ``src`` into ``dst``; returns the event that marks completion (CUDA).

        ``after``: an event the copy must wait for before writing ``dst`` or reading ``src``.
        """
        if not self.cuda:
            for k, t in src.items():
                np.copyto(bytes_array(dst[k]), bytes_array(t))
            return None
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            for k, t in src.items():
                dst[k].copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return done

    def compute_point(self) -> "torch.cuda.Event | None":
        """An event on the current (compute) stream: everything queued so far on it is before it."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def use_on_compute(self, ready: "torch.cuda.Event | None") -> None:
        """Make the compute stream wait for a copy before it uses the destination."""
        if ready is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)

    @staticmethod
    def wait_host(event: "torch.cuda.Event | None") -> None:
        """Block the calling thread until ``event`` completes (before host memory is read or reused)."""
        if event is not None:
            event.synchronize()
