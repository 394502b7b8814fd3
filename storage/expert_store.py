"""The tiered expert store: equally shaped expert records across hbm, dram and NVMe.

Tiers (capacities in experts, ``0 < hbm <= dram <= num_experts``)
    ``hbm``  a pool of record buffers on the compute device: the working set the model computes
             with (on a CPU-only machine, host tensors; the tier is still real).
    ``dram`` a pool of host record buffers, pinned when the device is CUDA.
    ``nvme`` slab files in the store directory (``storage/slab.py``) holding every expert.
    The hierarchy is inclusive: an expert in hbm also owns a dram buffer (its write-back target),
    so dram never evicts an expert that is in hbm.

Eviction (one policy, LRU per tier)
    The victim is the least recently used resident (a demand access or a prefetch's arrival makes
    an expert most recent) that is not in use (between :meth:`get` and :meth:`release`), has no
    transfer in flight and, in hbm, is not pinned. A dirty victim is written back first (hbm -> its
    dram buffer; dram -> a free NVMe slot), never dropped. A demand that finds no victim waits for
    other threads' leases and transfers; only when nothing but its own leases and the pins fill the
    tier does it raise :class:`CapacityError` (the store stays usable).

Concurrency
    One condition variable guards all bookkeeping; I/O runs outside it. Each expert has at most one
    transfer in flight (``busy``); every other access to it waits for that transfer, so no expert is
    read while its write-back is in flight, nor loaded twice. Demand loads run in the calling
    thread, one at a time (``_demand_lock``, so two demand loads cannot each hold a buffer the other
    needs); a demand of several misses loads the first itself and queues the others on the pool of
    I/O threads, which also runs the prefetches. Loads on that pool never wait for a buffer (they
    give up instead, and the demand then loads the expert itself), so a demand load always makes
    progress when the capacities allow it at all. A
    queued prefetch counts as in flight: a demand for its expert waits for it. Leases are meant to be
    short (get, compute, release): a thread that holds leases while it demands more can wait for
    another thread's leases, so two threads doing that at once with a too small tier would wait for
    each other (in training only the learner thread leases experts).

Durability
    Only the durable kinds (``storage/slab.py``) are versioned and committed; a scratch kind is
    written in place to its expert's one slot, checked against a CRC-32C kept in memory, and reads as
    zeros until it is first written after an open (so a resume or a rollback starts it from zero).
    A write-back of the durable kinds to NVMe goes to a slot that no committed state names; :meth:`flush` fsyncs the
    slabs and then commits the manifest atomically (``storage/manifest.py``). A crash, a full disk
    or any other failure therefore leaves the last committed state intact; after a failure the
    store refuses further use (every call re-raises the first error; a failure is recorded before
    the failed transfer is marked done, so no waiter can commit past it). :meth:`flush` holds the
    store's lock while it writes, so other threads' accesses wait for a checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from storage.manifest import MANIFEST, Manifest, SlotRef
from storage.slab import SUFFIX, Record, RecordSpec, SlabFile, empty_record, tensor_crc
from storage.stats import StoreCounters
from storage.transfer import Mover
from common.errors import UserError


class CorruptExpertError(UserError):
    """One or more experts fail their CRC-32C check; ``experts`` lists their ids."""

    def __init__(self, directory: Path, experts: list[int], detail: str) -> None:
        self.experts = experts
        names = ", ".join(str(e) for e in experts)
        super().__init__(f"expert store {directory}: expert{'s' if len(experts) > 1 else ''} {names} "
                         f"fail{'' if len(experts) > 1 else 's'} the crc32c check ({detail}); restore from a "
                         "backup, or open the store without verification to read the others")


class CapacityError(UserError):
    """A tier cannot hold the experts this thread has in use plus the pinned ones; the store stays usable."""


@dataclass
class _Expert:
    """Bookkeeping of one expert (guarded by the store's condition variable)."""

    current: SlotRef
    """Newest version on NVMe (committed, or written back since the last commit)."""
    hbm: int | None = None
    """Index of its hbm buffer, when resident."""
    dram: int | None = None
    """Index of its dram buffer, when resident."""
    hbm_dirty: bool = False
    """The hbm copy is newer than the dram copy."""
    dram_dirty: bool = False
    """The dram copy is newer than NVMe."""
    busy: bool = False
    """A transfer of this expert is in flight; everyone else waits."""
    prefetching: bool = False
    """The transfer in flight is a prefetch."""
    demand_waiting: bool = False
    """A demand is waiting for the prefetch in flight (it is late; used if it loads)."""
    prefetched: bool = False
    """Brought in by a prefetch and not demanded since."""
    uses: int = 0
    """Open :meth:`ExpertStore.get` leases."""
    pins: int = 0
    scratch_crc: dict[str, int] | None = None
    """CRC-32C of each scratch kind as last written to NVMe since the store was opened; None: not
    written since, so the scratch kinds read as zeros."""


@dataclass
class _Pool:
    """A tier's buffers and LRU order (expert ids, least recently demanded first)."""

    buffers: list[Record]
    free: list[int] = field(default_factory=list)
    lru: OrderedDict[int, None] = field(default_factory=OrderedDict)
    events: list = field(default_factory=list)
    """Per buffer, the CUDA event of the last copy or release touching it (None on CPU)."""


class ExpertStore:
    """Many equally shaped expert records across hbm, dram and NVMe (see the module docstring)."""

    def __init__(self, directory: Path, manifest: Manifest, hbm: int, dram: int, device: torch.device | str,
                 io_threads: int = 2, record_trace: bool = False, read_path: str = "preadv",
                 io_depth: int = 4) -> None:
        """Use :meth:`create` or :meth:`open`. Snapshots kept: ``slots_per_expert - 2`` (the manifest's).
        ``io_threads`` run prefetches; NVMe reads go through ``read_path`` (``storage/slab.py``), at most
        ``io_depth`` requests in flight."""
        self.directory = Path(directory)
        self.spec: RecordSpec = manifest.spec
        self.num_experts = manifest.num_experts
        validate_capacities(hbm, dram, self.num_experts)
        self.hbm_capacity, self.dram_capacity = hbm, dram
        self.device = torch.device(device)
        self.keep_snapshots = manifest.slots_per_expert - 2
        self._manifest = manifest
        self.recovered = manifest.damage
        """Set when the newest manifest copy was damaged and the store opened the previous commit: what was lost."""
        # io_depth - 1 readers: the thread that needs a read makes one request itself (_parallel).
        self._readers = ThreadPoolExecutor(max_workers=io_depth - 1, thread_name_prefix="expert-read") if io_depth > 1 else None
        self._slabs: dict[str, SlabFile] = {}
        try:
            for k, s in self.spec.items():
                self._slabs[k] = SlabFile(self.directory / f"{k}{SUFFIX}", s, manifest.slab_slots(k), create=False,
                                          read_path=read_path)
        except BaseException:
            self._close_files()
            raise
        self._mover = Mover(self.device)
        self._experts = [_Expert(current=ref) for ref in manifest.experts]
        cuda = self.device.type == "cuda"
        self._hbm = _Pool([empty_record(self.spec, self.device) for _ in range(hbm)], list(range(hbm)), events=[None] * hbm)
        self._dram = _Pool([empty_record(self.spec, pin_memory=cuda) for _ in range(dram)], list(range(dram)),
                           events=[None] * dram)
        self._record_bytes = sum(s.nbytes for s in self.spec.values())
        self._cv = threading.Condition()
        self._demand_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="expert-io")
        self._error: BaseException | None = None
        self._closed = False
        self._flushes_waiting = 0
        self._held: dict[int, dict[int, int]] = {}  # thread id -> expert -> open leases
        self.counters = StoreCounters()
        self.trace: list[list[int]] | None = [] if record_trace else None
        """Demand accesses, one list of expert ids per :meth:`get` (when ``record_trace``)."""

    # ----------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, directory: Path, spec: RecordSpec, num_experts: int, hbm: int, dram: int,
               device: torch.device | str = "cpu", init: Callable[[int], Record] | None = None,
               keep_snapshots: int = 2, **kwargs) -> "ExpertStore":
        """Make a new store in ``directory`` holding ``init(e)`` (zeros if None) for every expert:
        ``init`` gives the durable kinds; the scratch kinds start at zero."""
        directory = Path(directory)
        validate_capacities(hbm, dram, num_experts)
        if (directory / MANIFEST).exists():
            raise UserError(f"{directory} already holds an expert store; open it instead")
        directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(spec, num_experts, 2 + keep_snapshots, [])
        zeros = {k: torch.zeros(spec[k].shape, dtype=spec[k].dtype) for k in manifest.durable}
        slabs: dict[str, SlabFile] = {}
        try:
            for k, s in spec.items():
                slabs[k] = SlabFile(directory / f"{k}{SUFFIX}", s, manifest.slab_slots(k), create=True)
            for e in range(num_experts):
                record = init(e) if init is not None else zeros
                for k in manifest.durable:
                    slabs[k].write(manifest.global_slot(e, 0), record[k].contiguous())
                manifest.experts.append(SlotRef(0, 0, {k: tensor_crc(record[k].contiguous()) for k in manifest.durable}))
            for slab in slabs.values():
                slab.sync()
            manifest.save(directory, previous=None)
        except BaseException:  # no store: leave no slab behind (a half-made store is never opened)
            for k in spec:
                (directory / f"{k}{SUFFIX}").unlink(missing_ok=True)
            raise
        finally:
            for slab in slabs.values():
                slab.close()
        return cls(directory, manifest, hbm, dram, device, **kwargs)

    @classmethod
    def open(cls, directory: Path, hbm: int, dram: int, device: torch.device | str = "cpu", verify: bool = True,
             snapshot: str | None = None, **kwargs) -> "ExpertStore":
        """Open an existing store; ``verify`` checks every expert's CRC-32C (raises
        :class:`CorruptExpertError` naming the bad ones); ``snapshot`` rolls the store back to the
        state saved by :meth:`checkpoint` under that tag, committed (later snapshots dropped) only
        once it has verified."""
        directory = Path(directory)
        for stale in directory.glob(".manifest*.tmp"):  # one writer: a temp file is a killed commit's
            stale.unlink(missing_ok=True)
        manifest = Manifest.load(directory)
        loaded = replace(manifest, snapshots=dict(manifest.snapshots), snapshot_order=list(manifest.snapshot_order))
        if snapshot is not None:
            if snapshot not in manifest.snapshots:
                lost = f"; {manifest.damage}" if manifest.damage else ""
                raise UserError(f"expert store {directory} has no snapshot {snapshot!r} "
                                f"(it has: {', '.join(manifest.snapshot_order) or 'none'}){lost}")
            manifest.experts = [replace(r) for r in manifest.snapshots[snapshot]]
            keep = manifest.snapshot_order.index(snapshot) + 1
            for later in manifest.snapshot_order[keep:]:
                del manifest.snapshots[later]
            manifest.snapshot_order = manifest.snapshot_order[:keep]
            manifest.seq += 1
        store = cls(directory, manifest, hbm, dram, device, **kwargs)
        try:
            bad = store.verify() if verify else {}
            if bad:
                raise CorruptExpertError(directory, sorted(bad), bad[min(bad)])
            if snapshot is not None:
                manifest.save(directory, previous=loaded)
        except BaseException:
            store.close()
            raise
        return store

    def verify(self) -> dict[int, str]:
        """Read every expert's committed version (its durable kinds) from NVMe and check its CRC-32C:
        ``{expert: what failed}``."""
        buffer = empty_record(self.spec)
        bad = {}
        durable = self._manifest.durable
        for e, ref in enumerate(self._manifest.experts):
            for k, crc in zip(durable, self._read_kinds(e, ref.slot, buffer, durable)):
                if crc != ref.crc[k]:
                    bad[e] = f"kind {k!r}, slot {ref.slot}"
                    break
        return bad

    # ----------------------------------------------------------------------------- demand access
    def get(self, ids: Iterable[int]) -> list[Record]:
        """The hbm records of ``ids`` (in that order), loading misses; each stays resident (and must
        not be evicted) until :meth:`release`. Blocks on misses; the wait is ``stall_s``."""
        ids = list(ids)
        unique = list(dict.fromkeys(ids))
        self._check_ids(unique)
        if self.trace is not None:
            with self._cv:
                self.trace.append(unique)
        with self._cv:  # hits first: leased, they cannot be evicted by the loads of the misses
            misses = [x for x in unique if self._experts[x].hbm is None or self._experts[x].busy]
            for x in misses:  # counted now: an expert loaded ahead is resident by the time its turn comes
                self._count_miss(x)
        order = [x for x in unique if x not in misses] + misses
        stall = 0.0
        acquired = []
        try:
            for e in order:
                if misses and e == misses[0]:  # the first miss loads here; the others meanwhile on the I/O threads
                    self._start_loads(misses[1:], prefetch=False)
                stall += self._acquire(e, counted=e in misses)
                acquired.append(e)
        except BaseException:
            if acquired and self._error is None:
                self.release(acquired)
            raise
        with self._cv:
            self.counters.stall_s += stall
            records = {e: self._hbm.buffers[self._experts[e].hbm] for e in unique}
            events = [self._hbm.events[self._experts[e].hbm] for e in unique]
        for event in events:
            self._mover.use_on_compute(event)
        return [records[e] for e in ids]

    def release(self, ids: Iterable[int], dirty: bool = False) -> None:
        """End the lease of :meth:`get` on ``ids``; ``dirty``: their hbm records were modified."""
        ids = list(dict.fromkeys(ids))
        point = self._mover.compute_point()
        with self._cv:
            held = self._held.get(threading.get_ident(), {})
            for e in ids:
                if held.get(e, 0) <= 0 or self._experts[e].hbm is None:
                    raise RuntimeError(f"release of expert {e}, which this thread does not have in use")
            for e in ids:
                ent = self._experts[e]
                held[e] -= 1
                ent.uses -= 1
                ent.hbm_dirty |= dirty
                if point is not None:
                    self._hbm.events[ent.hbm] = point
            self._cv.notify_all()

    @contextmanager
    def use(self, ids: Iterable[int], dirty: bool = False) -> Iterator[list[Record]]:
        """``with store.use(ids, dirty=True) as records:`` get, then release (marking dirty)."""
        ids = list(ids)
        records = self.get(ids)
        try:
            yield records
        finally:
            self.release(ids, dirty)

    def _acquire(self, e: int, counted: bool) -> float:
        """Make expert ``e`` hbm-resident and leased; count the access once (``counted``: already
        counted as a miss); return the seconds waited."""
        ent = self._experts[e]
        start = None
        while True:
            with self._cv:
                self._check_error()
                if ent.hbm is not None and not ent.busy:
                    if not counted:
                        self.counters.hbm_hits += 1
                    if ent.prefetched:
                        self.counters.prefetch_used += 1
                        ent.prefetched = False
                    self._lease(e)
                    self._touch(e)
                    return 0.0 if start is None else time.perf_counter() - start
                if not counted:
                    counted = True
                    self._count_miss(e)
                if start is None:
                    start = time.perf_counter()
                if ent.busy:
                    self._cv.wait()
                    continue
            with self._demand_lock:
                with self._cv:
                    if ent.busy or ent.hbm is not None:  # changed while this thread waited for the lock
                        continue
                    self.counters.dram_hits += ent.dram is not None
                    self.counters.dram_misses += ent.dram is None
                    ent.busy = True
                    self._lease(e)  # leased before the load ends, so nothing evicts it in between
                # Not fatal here: _bring_in has already recorded its own failure as the store's error.
                with self._settling(undo=lambda: self._unlease(e), fatal=False):
                    self._bring_in(e, False)
            with self._cv:
                self._touch(e)
            return time.perf_counter() - start

    def _count_miss(self, e: int) -> None:
        """A demand access that finds ``e`` not resident, or in flight (lock held)."""
        self.counters.hbm_misses += 1
        ent = self._experts[e]
        if ent.busy and ent.prefetching:
            ent.demand_waiting = True  # late: counted as used (and late) if it loads

    def _lease(self, e: int) -> None:
        """One more use of expert ``e`` by the calling thread (lock held)."""
        self._experts[e].uses += 1
        held = self._held.setdefault(threading.get_ident(), {})
        held[e] = held.get(e, 0) + 1

    def _unlease(self, e: int) -> None:
        """Undo one :meth:`_lease` of expert ``e`` by the calling thread (lock held)."""
        self._experts[e].uses -= 1
        self._held[threading.get_ident()][e] -= 1

    def _touch(self, e: int) -> None:
        """Mark a demand access in the LRU orders (lock held)."""
        self._hbm.lru.move_to_end(e)
        if self._experts[e].dram is not None:
            self._dram.lru.move_to_end(e)

    # ----------------------------------------------------------------------------- prefetch, pins
    def prefetch(self, ids: Iterable[int]) -> None:
        """Start bringing ``ids`` into hbm on the I/O threads; returns at once."""
        ids = list(dict.fromkeys(ids))
        self._check_ids(ids)
        with self._cv:
            self._check_error()
            if self._closed:
                raise RuntimeError("prefetch on a closed expert store")
        self._start_loads(ids, prefetch=True)

    def _start_loads(self, ids: list[int], prefetch: bool) -> None:
        """Queue loads of those of ``ids`` neither resident nor in flight on the I/O threads: a
        prefetch's (counted as prefetches), or a demand's misses after its first (loaded ahead while
        the demand loads that one, so a demand of several misses keeps several reads in flight).
        Either kind gives up when it finds no free buffer, and is dropped while a flush waits."""
        started = []
        with self._cv:
            if self._flushes_waiting or self._closed:  # a flush waits for quiet; the demand loads inline
                return
            for e in ids:
                ent = self._experts[e]
                if ent.hbm is not None or ent.busy:
                    continue
                ent.busy = True
                ent.prefetching = prefetch
                self.counters.prefetch_issued += prefetch
                started.append(e)

        def unclaim(rest: list[int]) -> None:
            for x in rest:
                self._experts[x].busy = self._experts[x].prefetching = False

        for i, e in enumerate(started):
            # A submit can fail (e.g. the pool shut down meanwhile): then nothing not yet submitted may
            # stay "in flight". Not a failure of the store's data, so the store stays usable.
            with self._settling(undo=partial(unclaim, started[i:]), fatal=False):
                self._pool.submit(self._load_job, e, prefetch)

    def pin(self, ids: Iterable[int]) -> None:
        """Never evict ``ids`` from hbm until :meth:`unpin`; prefetches those not resident."""
        ids = list(dict.fromkeys(ids))
        self._check_ids(ids)
        with self._cv:
            self._check_error()
            pinned = {e for e, ent in enumerate(self._experts) if ent.pins} | set(ids)
            if len(pinned) >= self.hbm_capacity:
                raise UserError(f"cannot pin {len(pinned)} experts in an hbm tier of {self.hbm_capacity}: "
                                "leave room for the experts in use (raise --hbm-experts or pin fewer)")
            for e in ids:
                self._experts[e].pins += 1
        self.prefetch(ids)

    def unpin(self, ids: Iterable[int]) -> None:
        """Undo one :meth:`pin` of each of ``ids``."""
        ids = list(dict.fromkeys(ids))
        with self._cv:
            for e in ids:
                if self._experts[e].pins <= 0:
                    raise RuntimeError(f"unpin of expert {e}, which is not pinned")
            for e in ids:
                self._experts[e].pins -= 1
            self._cv.notify_all()

    def evict(self, ids: Iterable[int]) -> None:
        """Move ``ids`` out of hbm now (dirty ones written back to dram), unless in use, pinned or in
        flight; e.g. to drop a finished game's cohort, or to run without caching as a baseline."""
        for e in dict.fromkeys(ids):
            with self._cv:
                self._check_error()
                ent = self._experts[e]
                if ent.hbm is None or ent.busy or ent.uses or ent.pins:
                    continue
                del self._hbm.lru[e]
                ent.busy = True
                h = self._detach(self._hbm, e)
            self._evict_hbm(e, h, free=True)

    def _load_job(self, e: int, prefetch: bool) -> None:
        try:
            self._bring_in(e, prefetch, ahead=not prefetch)
        except BaseException:  # already recorded as the store's error; demands re-raise it
            pass

    # ----------------------------------------------------------------------------- movement
    def _bring_in(self, e: int, prefetch: bool, ahead: bool = False) -> bool:
        """Load expert ``e`` (claimed: ``busy`` set by the caller) into hbm; False if a prefetch or an
        ``ahead`` load (a demand's miss loaded on an I/O thread, :meth:`_start_loads`) found no
        buffer. Clears ``busy`` (and settles the prefetch bookkeeping) when done; an ``ahead`` load
        counts its dram hit or miss, as the demand's own load does in :meth:`_acquire`."""
        ent = self._experts[e]
        loaded = False
        h = None
        from_dram = ent.dram is not None  # stays so while e is busy

        def settle() -> None:  # reads h and loaded as they stand when the transfer ends
            if h is not None:  # reserved but not used: give it back
                self._hbm.free.append(h)
            ent.busy = False
            if prefetch:
                if loaded and ent.demand_waiting:
                    self.counters.prefetch_used += 1
                    self.counters.prefetch_late += 1
                else:
                    ent.prefetched = loaded
                    self.counters.prefetch_dropped += not loaded
                ent.prefetching = ent.demand_waiting = False

        with self._settling(done=settle):
            with self._cv:
                h, victim = self._reserve(self._hbm, e, prefetch or ahead, lambda x: self._experts[x].pins == 0)
            if h is None:
                return False
            if victim is not None:
                self._evict_hbm(victim, h)
            if ent.dram is None:
                with self._cv:
                    d, dvictim = self._reserve(self._dram, e, prefetch or ahead, lambda x: self._experts[x].hbm is None)
                if d is None:
                    return False
                if dvictim is not None:
                    self._evict_dram(dvictim, d)
                self._read_nvme(e, d)
                with self._cv:
                    ent.dram = d
                    self._dram.lru[e] = None
            ready = self._mover.copy(self._dram.buffers[ent.dram], self._hbm.buffers[h], after=self._hbm.events[h])
            # Safe outside the lock: h is owned by this transfer, and ent.dram cannot be evicted while e is busy.
            self._hbm.events[h] = self._dram.events[ent.dram] = ready
            with self._cv:
                ent.hbm, h = h, None
                self._hbm.lru[e] = None
                self.counters.bytes_dram_to_hbm += self._record_bytes
                if ahead:
                    self.counters.dram_hits += from_dram
                    self.counters.dram_misses += not from_dram
            loaded = True
            return True

    def _reserve(self, pool: _Pool, owner: int, prefetch: bool,
                 eligible: Callable[[int], bool]) -> tuple[int | None, int | None]:
        """A buffer of ``pool`` for a new resident: a free one, or an evicted victim's (returned as
        ``(buffer, victim)``: the caller writes the victim back before reusing the buffer). Called
        with the lock held. A prefetch gives up at once; a demand waits while another thread's
        leases or transfers may free a buffer, and raises :class:`CapacityError` otherwise."""
        while True:
            self._check_error()
            if pool.free:
                return pool.free.pop(), None
            for x in pool.lru:
                ent = self._experts[x]
                if not ent.busy and ent.uses == 0 and eligible(x):
                    del pool.lru[x]
                    ent.busy = True
                    return self._detach(pool, x), x
            if prefetch:
                return None, None
            mine = self._held.get(threading.get_ident(), {})
            others_busy = any(ent.busy for x, ent in enumerate(self._experts) if x != owner)
            others_hold = any(ent.uses > mine.get(x, 0) for x, ent in enumerate(self._experts))
            if not (others_busy or others_hold):
                tier = "hbm" if pool is self._hbm else "dram"
                raise CapacityError(f"the {tier} tier ({len(pool.buffers)} experts) cannot hold the experts in use "
                                    "and pinned at once; raise its capacity")
            self._cv.wait()

    def _detach(self, pool: _Pool, x: int) -> int:
        ent = self._experts[x]
        if pool is self._hbm:
            buf, ent.hbm = ent.hbm, None
            self.counters.evictions_hbm += 1
            if ent.prefetched:
                self.counters.prefetch_wasted += 1
                ent.prefetched = False
        else:
            buf, ent.dram = ent.dram, None
            self.counters.evictions_dram += 1
        return buf

    def _evict_hbm(self, x: int, h: int, free: bool = False) -> None:
        """Write victim ``x``'s hbm buffer ``h`` back to its dram buffer if dirty; clears ``busy``
        (and, with ``free``, returns ``h`` to the free list in the same step)."""
        def settle() -> None:
            if free:
                self._hbm.free.append(h)
            self._experts[x].busy = False

        with self._settling(done=settle):
            self._write_back_hbm(x, h)

    def _write_back_hbm(self, x: int, h: int, after: "torch.cuda.Event | None" = None) -> None:
        """Copy expert ``x``'s hbm buffer ``h`` into its dram buffer if the hbm copy is newer.
        ``after``: the event the copy waits for (default: the buffer's last release)."""
        ent = self._experts[x]
        if not ent.hbm_dirty:
            return
        done = self._mover.copy(self._hbm.buffers[h], self._dram.buffers[ent.dram],
                                after=self._hbm.events[h] if after is None else after)
        self._mover.wait_host(done)
        self._hbm.events[h] = done
        with self._cv:
            ent.hbm_dirty = False
            ent.dram_dirty = True
            self.counters.bytes_hbm_to_dram += self._record_bytes

    def _evict_dram(self, x: int, d: int) -> None:
        """Write victim ``x``'s dram buffer ``d`` to a free NVMe slot if dirty; clears ``busy``."""
        ent = self._experts[x]

        def settle() -> None:
            ent.busy = False

        with self._settling(done=settle):
            if ent.dram_dirty:
                self._mover.wait_host(self._dram.events[d])
                self._write_nvme(x, self._dram.buffers[d])

    def _write_nvme(self, x: int, record: Record) -> None:
        """Write a host record of expert ``x`` into a slot no committed state names (uncommitted until
        :meth:`flush`). Takes the lock only for bookkeeping (re-entrant: flush calls it holding it)."""
        ent = self._experts[x]
        with self._cv:
            slot = self._manifest.free_slot(x, prefer=ent.current.slot)
        for k, slab in self._slabs.items():
            slab.write(self._slab_slot(k, x, slot), record[k])
        crc = {k: tensor_crc(record[k]) for k in self.spec}
        with self._cv:
            ent.current = SlotRef(slot, ent.current.version + 1, {k: crc[k] for k in self._manifest.durable})
            ent.scratch_crc = {k: c for k, c in crc.items() if self.spec[k].scratch}
            ent.dram_dirty = False
            self.counters.bytes_dram_to_nvme += self._record_bytes

    def _read_nvme(self, e: int, d: int) -> None:
        """Fill dram buffer ``d`` with expert ``e``'s newest NVMe version and check its CRC-32C (scratch
        kinds not written since the open: zeros)."""
        self._mover.wait_host(self._dram.events[d])
        ent = self._experts[e]
        ref, scratch_crc = ent.current, ent.scratch_crc
        record = self._dram.buffers[d]
        expected = dict(ref.crc)
        for k in self.spec:
            if self.spec[k].scratch and scratch_crc is None:
                record[k].zero_()
            elif self.spec[k].scratch:
                expected[k] = scratch_crc[k]
        kinds = list(expected)
        for k, crc in zip(kinds, self._read_kinds(e, ref.slot, record, kinds)):
            if crc != expected[k]:
                where = "its scratch slot" if self.spec[k].scratch else f"slot {ref.slot}"
                raise CorruptExpertError(self.directory, [e], f"kind {k!r}, {where}")
        with self._cv:  # what came from the disk (not the scratch kinds zeroed above)
            self.counters.bytes_nvme_to_dram += sum(self.spec[k].nbytes for k in kinds)

    # ----------------------------------------------------------------------------- durability
    def flush(self, snapshot: str | None = None) -> None:
        """Write every dirty expert down to NVMe and commit the manifest (fsync slabs, then an atomic
        manifest replace). ``snapshot``: also retain this state under that tag (see :meth:`checkpoint`).

        Call it at a quiet point: experts in use are written as they are at this moment."""
        with self._cv:
            self._check_error()
            self._flushes_waiting += 1  # no new prefetch starts until this flush has run: else
            try:                        # a steady stream of them keeps some expert busy forever
                while any(ent.busy for ent in self._experts):
                    self._cv.wait()
            finally:
                self._flushes_waiting -= 1
            self._check_error()  # a transfer that failed while this thread waited
            with self._settling():
                self._flush_locked(snapshot)

    def checkpoint(self, tag: str) -> None:
        """Flush, and retain this committed state as snapshot ``tag`` (the newest ``keep_snapshots``
        are kept) so :meth:`open` can roll back to it even after later write-backs."""
        self.flush(snapshot=tag)

    def _flush_locked(self, snapshot: str | None) -> None:
        for e, ent in enumerate(self._experts):
            if ent.hbm is not None:
                # An expert in use may have work queued on the compute stream: wait for all of it.
                self._write_back_hbm(e, ent.hbm, after=self._mover.compute_point() if ent.uses else None)
            if ent.dram is not None and ent.dram_dirty:
                self._write_nvme(e, self._dram.buffers[ent.dram])
        for slab in self._slabs.values():
            slab.sync()
        m = self._manifest
        committed = [replace(ent.current) for ent in self._experts]
        snapshots, order = dict(m.snapshots), list(m.snapshot_order)
        if snapshot is not None:
            if snapshot in snapshots:
                order.remove(snapshot)
            snapshots[snapshot] = [replace(r) for r in committed]
            order.append(snapshot)
            for old in order[: max(0, len(order) - self.keep_snapshots)]:
                del snapshots[old]
            order = order[-self.keep_snapshots:] if self.keep_snapshots else []
        new = Manifest(m.spec, m.num_experts, m.slots_per_expert, committed, m.seq + 1, snapshots, order)
        new.save(self.directory, previous=m)
        self._manifest = new

    @property
    def snapshots(self) -> list[str]:
        """Retained snapshot tags, oldest first."""
        with self._cv:
            return list(self._manifest.snapshot_order)

    @property
    def committed_versions(self) -> list[int]:
        """Committed version of each expert (number of write-backs that reached a commit)."""
        with self._cv:
            return [r.version for r in self._manifest.experts]

    # ----------------------------------------------------------------------------- introspection
    def stats(self) -> dict[str, float]:
        """Cumulative counters and rates (``storage/stats.py``), plus the current residency."""
        with self._cv:
            d = self.counters.as_dict()
            d["resident_hbm"] = len(self._hbm.lru)
            d["resident_dram"] = len(self._dram.lru)
            d["pinned"] = sum(1 for ent in self._experts if ent.pins)
            d["dirty"] = sum(1 for ent in self._experts if ent.hbm_dirty or ent.dram_dirty)
        return d

    @property
    def pinned_count(self) -> int:
        """Experts pinned now (cheaper than :meth:`stats` for a caller sizing its chunks)."""
        with self._cv:
            return sum(1 for ent in self._experts if ent.pins)

    def tier_of(self, e: int) -> str:
        """``"hbm"``, ``"dram"`` or ``"nvme"``: the fastest tier holding expert ``e`` now."""
        with self._cv:
            ent = self._experts[e]
            return "hbm" if ent.hbm is not None else "dram" if ent.dram is not None else "nvme"

    def wait_idle(self) -> None:
        """Block until no transfer is in flight (e.g. before reading counters in a test or benchmark)."""
        with self._cv:
            while any(ent.busy for ent in self._experts):
                self._cv.wait()
            self._check_error()

    def drop_page_cache(self) -> None:
        """Evict the slab files from the OS page cache, so NVMe reads are real reads (benchmarks)."""
        for slab in self._slabs.values():
            slab.drop_cache()

    def close(self) -> None:
        """Stop the I/O threads and close the files (no implicit flush: uncommitted work is dropped)."""
        with self._cv:
            self._closed = True
        self._pool.shutdown(wait=True)
        self._close_files()

    def _close_files(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        for slab in self._slabs.values():
            slab.close()

    def __deepcopy__(self, memo: dict) -> "ExpertStore":
        # A store is a resource (files, threads), not a value: a copied model (the actor's replica)
        # shares it rather than cloning it.
        return self

    def __enter__(self) -> "ExpertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- helpers
    def _slab_slot(self, kind: str, e: int, slot: int) -> int:
        """Where expert ``e``'s version in its ``slot`` lies in ``kind``'s slab (a scratch kind: its one slot)."""
        return e if self.spec[kind].scratch else self._manifest.global_slot(e, slot)

    def _read_kinds(self, e: int, slot: int, record: Record, kinds: list[str]) -> list[int]:
        """Read ``kinds`` of expert ``e`` (its version in ``slot``) into host ``record``, every request
        in flight at once on the reader threads; their CRC-32Cs, in the order of ``kinds``. A kind read
        in one request is checked in that request's job, while its bytes are still in the CPU's cache;
        a kind of several requests once they have all arrived."""
        jobs, fused = [], {}
        for k in kinds:
            pieces = self._slabs[k].read_pieces(self._slab_slot(k, e, slot), record[k])
            if len(pieces) == 1:
                fused[k] = len(jobs)
                jobs.append(partial(_read_then_crc, pieces[0], record[k]))
            else:
                jobs += pieces
        done = self._parallel(jobs)
        rest = [k for k in kinds if k not in fused]
        crc = dict(zip(rest, self._parallel([partial(tensor_crc, record[k]) for k in rest])))
        return [done[fused[k]] if k in fused else crc[k] for k in kinds]

    def _parallel(self, jobs: list[Callable[[], object]]) -> list:
        """The results of ``jobs``: the first in the calling thread, the rest meanwhile on the reader
        threads (``io_depth`` requests in flight in all; all inline with one thread); every job has
        ended before a failure propagates."""
        if self._readers is None or len(jobs) <= 1:
            return [job() for job in jobs]
        futures = [self._readers.submit(job) for job in jobs[1:]]
        try:
            first = jobs[0]()
        finally:
            wait(futures)
        return [first] + [f.result() for f in futures]

    @contextmanager
    def _settling(self, done: Callable[[], None] | None = None, undo: Callable[[], None] | None = None,
                  fatal: bool = True) -> Iterator[None]:
        """Run a step that has claimed experts or buffers, and settle their bookkeeping however it ends.

        On a failure of the body: with ``fatal`` it first becomes the store's error (:meth:`_fail`;
        before ``done`` marks anything finished, so no waiter can commit past it), then ``undo``
        gives back what the step claimed, and the failure propagates. Failed or not, ``done`` then
        marks the step finished. ``undo`` and ``done`` run under the lock, each followed by waking
        the waiters (they may now proceed)."""
        try:
            yield
        except BaseException as err:
            if fatal:
                self._fail(err)
            if undo is not None:
                with self._cv:
                    undo()
                    self._cv.notify_all()
            raise
        finally:
            if done is not None:
                with self._cv:
                    done()
                    self._cv.notify_all()

    def _fail(self, err: BaseException) -> None:
        """Keep the first failure of a transfer as the store's error (every later call re-raises it);
        a capacity shortage is the caller's problem, not the store's."""
        if isinstance(err, CapacityError):
            return
        with self._cv:
            if self._error is None:
                self._error = err
            self._cv.notify_all()

    def _check_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _check_ids(self, ids: list[int]) -> None:
        for e in ids:
            if not 0 <= e < self.num_experts:
                raise IndexError(f"expert id {e} out of range [0, {self.num_experts})")
        if len(ids) > self.hbm_capacity:
            raise UserError(f"{len(ids)} experts requested at once, but the hbm tier holds {self.hbm_capacity}")


def _read_then_crc(read: Callable[[], None], t: torch.Tensor) -> int:
    read()
    return tensor_crc(t)


def validate_capacities(hbm: int, dram: int, total: int) -> None:
    """``0 < hbm <= dram <= total``, or a UserError that says which bound is broken."""
    if not 0 < hbm <= dram <= total:
        raise UserError(f"expert store capacities must satisfy 0 < hbm <= dram <= experts; got hbm={hbm}, "
                        f"dram={dram}, experts={total}")
