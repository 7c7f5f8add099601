"""Releasing KVM resources on every path: `close` is idempotent and exception-safe on `Vcpu`,
`Vm`, `GuestMemory`, `Machine` and `PhysMemory`; Ctrl-C inside ``KVM_RUN`` leaves no fd and no
mapping behind (it used to end in a ``BufferError`` traceback: the kvm_run view of the frame
that was interrupted pinned the vCPU's page, and the failed close leaked everything after it);
SIGINT is held while a handle is created or closed (`signals_deferred`)."""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Iterator

import pytest

from kvmpage.kvm.handles import Kvm
from kvmpage.kvm.signals import signals_deferred
from kvmpage.machine import Batch, Machine, pte
from kvmpage.memory import PhysMemory

VA = 0x0000_0040_0000_0000
SPIN = b"\xeb\xfe"  # jmp .


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _mapped(address: int) -> bool:
    """Whether host virtual ``address`` lies in a mapping of this process."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


def _spinning(m: Machine, cpl: int = 3) -> Batch:
    """A batch that never ends: a fetch of ``jmp .`` at CPL ``cpl``."""
    frames = pte.FrameBump(m.memory, pte.SIZE_4K, m.reserved[0])
    space = pte.SimpleSpace(m.memory, frames)
    frame = frames.alloc()
    m.memory.write(frame + 0x800, SPIN)
    space.map(VA, frame, pte.P | pte.U if cpl == 3 else pte.P)
    m.install_agent_slot(space.p4)
    b = Batch()
    b.load_cr3(space.p4)
    b.fetch(VA + 0x800, cpl=cpl)
    return b


@pytest.fixture
def sigint_after() -> Iterator[object]:
    """``sigint_after(seconds)``: SIGINT to this process from another thread, once."""
    timers: list[threading.Timer] = []

    def arm(seconds: float) -> None:
        t = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
        timers.append(t)
        t.start()

    yield arm
    for t in timers:
        t.cancel()


# -- PhysMemory (no KVM) -------------------------------------------------------------------


def test_phys_memory_close_is_idempotent_and_releases_every_view() -> None:
    memory = PhysMemory(1 << 16)
    anchor = pickle.PickleBuffer(memory._bytes)  # holds an export of one of the two views
    with pytest.raises(BufferError):
        memory.close()
    assert memory.closed  # the other view was released all the same
    anchor.release()
    memory.close()
    memory.close()
    assert memory.closed


# -- KVM handles ---------------------------------------------------------------------------


@pytest.mark.kvm
def test_vcpu_close_is_not_blocked_by_a_kept_kvm_run_structure() -> None:
    fds = _fds()
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        kept = vcpu.run_struct  # what a frame of an interrupted run holds
        vcpu.close()
        vcpu.close()
        assert vcpu.closed and kept is not None
    assert _fds() == fds


@pytest.mark.kvm
def test_vm_close_with_pinned_memory_closes_every_fd_then_unmaps_later() -> None:
    fds = _fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    memory = vm.add_memory(2 << 20)
    vm.create_vcpu(0)
    view = memory.view(0, 16)
    with pytest.raises(BufferError, match="release it"):
        vm.close()
    assert vm.closed and _mapped(memory.host_address)
    kvm.close()
    assert _fds() == fds  # the VM's and the vCPU's fds are gone although the memory is pinned
    view.release()
    vm.close()
    assert not _mapped(memory.host_address)


@pytest.mark.kvm
def test_machine_close_is_idempotent_and_retries_a_pinned_memory() -> None:
    fds = _fds()
    m = Machine(8 << 20)
    address = m.memory.host_address
    view = m.memory.view(0, 8)
    with pytest.raises(BufferError):
        m.close()
    assert m.closed and _fds() == fds and _mapped(address)
    view.release()
    m.close()
    m.close()
    assert not _mapped(address)


@pytest.mark.kvm
def test_an_exception_leaving_a_machine_block_with_views_in_its_frames() -> None:
    """The frames an exception unwound may hold views of guest memory: leaving the ``with``
    block drops them and unmaps, and the exception that was leaving still arrives."""
    fds = _fds()
    address = 0

    def deep(m: Machine) -> None:
        words = m.memory._q[0:16]  # a slice: it pins the mmap like a user's view would
        assert words is not None
        raise LookupError("from deep inside")

    with pytest.raises(LookupError, match="deep inside"), Machine(8 << 20) as m:
        address = m.memory.host_address
        deep(m)
    assert _fds() == fds and not _mapped(address)


@pytest.mark.kvm
@pytest.mark.parametrize("cpl", [3, 0])
def test_ctrl_c_inside_kvm_run_releases_everything(cpl: int, sigint_after: object) -> None:
    fds = _fds()
    m = Machine(16 << 20, timeout=None)
    address = m.memory.host_address
    batch = _spinning(m, cpl)
    sigint_after(0.2)  # type: ignore[operator]
    with pytest.raises(KeyboardInterrupt) as info, m:
        m.run(batch)
    assert type(info.value) is KeyboardInterrupt  # not a BufferError from the close
    assert m.closed and _fds() == fds and not _mapped(address)


# -- signals_deferred ----------------------------------------------------------------------


def test_signals_wait_until_the_block_is_over() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecodes at which the handler would normally run
                pass
            steps.append("finished the block")
        steps.append("not reached")
    assert steps == ["finished the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_deferred_is_reentrant_and_leaves_other_handlers_alone() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with signals_deferred():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
                assert seen == []
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_signals_deferred_outside_the_main_thread_does_nothing() -> None:
    done: list[bool] = []

    def worker() -> None:
        with signals_deferred():
            done.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert done == [True]
