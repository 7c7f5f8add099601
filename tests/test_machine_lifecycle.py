"""Machine lifetimes on a real /dev/kvm: no fd or memory leaks over 1,000 VMs, the watchdog ends
a stuck guest at its timeout and leaves the machine usable, and views pinning guest memory are
reported."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kvmpage.kvm.errors import KvmUnavailableError
from kvmpage.kvm.handles import Kvm
from kvmpage.machine import Batch, Machine, MachineClosedError, WatchdogTimeout, pte

pytestmark = pytest.mark.kvm

TAG = 0x7A67_0000_0000_0000
VA = 0x0000_0040_0000_0000
SPIN = b"\xeb\xfe"  # jmp .


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _spinning_machine(cpl_flags: int) -> tuple[Machine, int, int]:
    """A machine whose page at VA holds a tagged frame with ``jmp .`` at offset 0x800."""
    m = Machine(16 << 20, timeout=10.0)
    frames = pte.FrameBump(m.memory, pte.SIZE_4K, m.reserved[0])
    space = pte.SimpleSpace(m.memory, frames)
    frame = frames.alloc()
    m.memory.write_u64(frame, TAG | frame)
    m.memory.write(frame + 0x800, SPIN)
    space.map(VA, frame, cpl_flags)
    m.install_agent_slot(space.p4)
    return m, space.p4, frame


def test_thousand_vms_leak_neither_fds_nor_memory() -> None:
    for _ in range(20):  # warm up caches and the allocator
        with Machine() as m:
            m.run(Batch())
    fds, rss = _fd_count(), _rss_kib()
    for i in range(1000):
        m = Machine()
        if i % 50 == 0:
            m.run(Batch())
        m.close()
    assert _fd_count() == fds
    growth = _rss_kib() - rss
    assert growth < 5 * 1024, f"RSS grew by {growth} KiB over 1000 VMs"


def test_shared_kvm_handle_and_closed_machine() -> None:
    fds = _fd_count()
    with Kvm() as kvm:
        machines = [Machine(8 << 20, kvm=kvm) for _ in range(3)]
        for m in machines:
            m.close()
            m.close()
        assert not kvm.closed
        with pytest.raises(MachineClosedError):
            machines[0].run(Batch())
    assert _fd_count() == fds


@pytest.mark.parametrize("cpl", [3, 0])
def test_watchdog_ends_a_stuck_guest_at_its_timeout(cpl: int) -> None:
    """The run's own timeout (not the machine's 10 s) stops the guest where it spins, never
    before the timeout, and the machine answers afterwards. How soon after the deadline the
    guest stops depends on the host's load: scripts/bench_kvm.py measures it."""
    flags = pte.P | pte.U if cpl == 3 else pte.P
    m, p4, frame = _spinning_machine(flags)
    with m:
        b = Batch()
        b.load_cr3(p4)
        b.fetch(VA + 0x800, cpl=cpl)
        timeout = 0.3
        t0 = time.monotonic()
        with pytest.raises(WatchdogTimeout) as stopped:
            m.run(b, timeout=timeout)
        assert time.monotonic() - t0 >= timeout  # never early (later is the host's load)
        message = str(stopped.value)
        assert "did not finish its batch within 0.3 s" in message, message
        assert f"stopped at rip={VA + 0x800:#x}" in message, message  # in the jmp . loop
        # still usable
        b = Batch()
        b.load_cr3(p4)
        i = b.read(VA, cpl=cpl)
        r = m.run(b)[i]
        assert r.ok and r.value == TAG | frame


def test_watchdog_works_from_a_worker_thread() -> None:
    m, p4, _ = _spinning_machine(pte.P | pte.U)
    errors: list[BaseException] = []

    def worker() -> None:
        b = Batch()
        b.load_cr3(p4)
        b.fetch(VA + 0x800)
        try:
            m.run(b, timeout=0.2)
        except BaseException as e:
            errors.append(e)

    with m:
        m.run(Batch())  # the main thread installs the signal handler
        t = threading.Thread(target=worker)
        t.start()
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], WatchdogTimeout)


def test_a_live_view_keeps_guest_memory_and_says_so() -> None:
    m = Machine(8 << 20)
    view = m.memory.view(0, 16)
    with pytest.raises(BufferError, match="release it"):
        m.close()
    assert m.closed
    view.release()


def test_failed_construction_leaks_nothing(tmp_path: os.PathLike[str]) -> None:
    fds = _fd_count()
    with pytest.raises(ValueError, match="2 MiB"):
        Machine(3 << 20)
    with pytest.raises(ValueError, match="no room"):
        Machine(4 << 20, capacity=1 << 16)
    with pytest.raises(KvmUnavailableError):
        Machine(device=os.path.join(tmp_path, "kvm"))
    assert _fd_count() == fds
