"""KVM bindings (`kvmpage.kvm`): ioctl numbers, structure layouts, exit decoding, error paths,
guest memory, and the handles on a real device. Only the tests marked ``kvm`` touch /dev/kvm.
(The guest protocol's encoding: test_machine_protocol.py; the agent build:
test_machine_build.py.)"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

import pytest

from kvmpage.kvm import abi
from kvmpage.kvm.errors import (
    KvmApiVersionError,
    KvmCapabilityError,
    KvmClosedError,
    KvmError,
    KvmPermissionError,
    KvmUnavailableError,
    open_error,
)
from kvmpage.kvm.exits import (
    FailEntryExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    ShutdownExit,
    UnknownExit,
    decode_exit,
)
from kvmpage.kvm.handles import Kvm, Vcpu
from kvmpage.kvm.memory import GuestMemory
from kvmpage.memory import PhysMemory, PhysMemoryError

# The table of kvm-host-notes.md section A4 (numbers checked there against gcc + kvm.h).
GOLDEN_IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_TRANSLATE": 0xC018AE85,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_CPUID2": 0xC008AE91,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_IOCTLS))
def test_ioctl_number_matches_host_notes(name: str) -> None:
    assert getattr(abi, name) == GOLDEN_IOCTLS[name], f"{name} = {getattr(abi, name):#x}"
    assert abi.IOCTL_NAMES[GOLDEN_IOCTLS[name]] == name


def test_struct_sizes_and_offsets() -> None:
    assert ctypes.sizeof(abi.kvm_sregs) == 312
    assert ctypes.sizeof(abi.kvm_regs) == 144
    assert ctypes.sizeof(abi.kvm_run) == 304
    assert abi.kvm_run.exit.offset == 32
    assert abi.kvm_run.kvm_valid_regs.offset == 288
    assert ctypes.sizeof(abi.cpuid2_type(3)) == 8 + 3 * 40
    assert ctypes.sizeof(abi.msrs_type(2)) == 8 + 2 * 16
    assert abi.cpuid2_type(3) is abi.cpuid2_type(3)  # cached


def test_ioc_rejects_oversized_argument() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        abi._IOC(abi.IOC_READ, abi.KVMIO, 1, 1 << 14)


def _run_page() -> tuple[ctypes.Array[ctypes.c_char], abi.kvm_run]:
    buf = ctypes.create_string_buffer(8192)
    return buf, abi.kvm_run.from_buffer(buf)


def test_decode_mmio_exit() -> None:
    _buf, run = _run_page()
    run.exit_reason = abi.KVM_EXIT_MMIO
    run.exit.mmio.phys_addr = 0x4000_0000
    run.exit.mmio.len = 4
    run.exit.mmio.is_write = 1
    run.exit.mmio.data[:4] = [1, 2, 3, 4]
    ex = decode_exit(run, ctypes.addressof(run))
    assert isinstance(ex, MmioExit)
    assert (ex.phys_addr, ex.length, ex.is_write, ex.value) == (0x4000_0000, 4, True, 0x04030201)


def test_decode_io_exit_reads_data_page() -> None:
    buf, run = _run_page()
    run.exit_reason = abi.KVM_EXIT_IO
    run.exit.io.direction = abi.KVM_EXIT_IO_OUT
    run.exit.io.size = 2
    run.exit.io.port = 0xE0
    run.exit.io.count = 2
    run.exit.io.data_offset = 4096
    ctypes.memmove(ctypes.addressof(buf) + 4096, b"\xaa\xbb\xcc\xdd", 4)
    ex = decode_exit(run, ctypes.addressof(run))
    assert isinstance(ex, IoExit)
    assert (ex.port, ex.size, ex.count, ex.data) == (0xE0, 2, 2, b"\xaa\xbb\xcc\xdd")


def test_decode_other_exits() -> None:
    _buf, run = _run_page()
    run.exit_reason = abi.KVM_EXIT_SHUTDOWN
    assert isinstance(decode_exit(run, 0), ShutdownExit)
    run.exit_reason = abi.KVM_EXIT_FAIL_ENTRY
    run.exit.fail_entry.hardware_entry_failure_reason = 0x21
    ex = decode_exit(run, 0)
    assert isinstance(ex, FailEntryExit) and ex.hardware_reason == 0x21
    run.exit_reason = abi.KVM_EXIT_INTERNAL_ERROR
    run.exit.internal.suberror = 1
    run.exit.internal.ndata = 2
    run.exit.internal.data[0] = 7
    ex = decode_exit(run, 0)
    assert isinstance(ex, InternalErrorExit) and ex.suberror == 1 and ex.data == (7, 0)
    run.exit_reason = 4242
    ex = decode_exit(run, 0)
    assert isinstance(ex, UnknownExit) and ex.reason == 4242


# -- error paths ----------------------------------------------------------------------------------


def test_missing_device_is_actionable(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "no-kvm-here")
    with pytest.raises(KvmUnavailableError) as info:
        Kvm(path)
    assert info.value.errno == errno.ENOENT
    assert "load the kvm module" in str(info.value)
    assert isinstance(info.value, OSError)


def test_permission_denied_message() -> None:
    err = open_error("/dev/kvm", PermissionError(errno.EACCES, "denied"))
    assert isinstance(err, KvmPermissionError)
    assert err.errno == errno.EACCES and "group" in str(err)


def test_not_a_kvm_device() -> None:
    with pytest.raises(KvmError) as info:
        Kvm("/dev/null")
    assert info.value.op == "KVM_GET_API_VERSION"
    assert info.value.errno == errno.ENOTTY


def test_wrong_api_version(monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    kvm = Kvm.from_fd(fd, "/dev/null")
    monkeypatch.setattr(Kvm, "api_version", lambda self: 11)
    with pytest.raises(KvmApiVersionError, match="version 11"):
        kvm._check_api_version()
    kvm.close()
    kvm.close()  # idempotent


def test_fake_fd_gives_ebadf_with_ioctl_name() -> None:
    unused = 1000
    while True:
        try:
            os.fstat(unused)
            unused += 1
        except OSError:
            break
    kvm = Kvm.from_fd(unused)
    with pytest.raises(KvmError) as info:
        kvm.check_extension(abi.KVM_CAP_USER_MEMORY)
    assert info.value.errno == errno.EBADF and info.value.op == "KVM_CHECK_EXTENSION"
    kvm._fd = -1  # never os.close() a number we do not own
    with pytest.raises(KvmClosedError):
        kvm.create_vm()
    with pytest.raises(KvmError, match="kvm_run"):
        Vcpu.from_fd(unused)


def test_vcpu_owns_its_fd_even_when_mapping_fails() -> None:
    before = len(os.listdir("/proc/self/fd"))
    fd = os.open("/dev/null", os.O_RDWR)
    with pytest.raises(KvmError, match="kvm_run"):
        Vcpu.from_fd(fd)
    assert len(os.listdir("/proc/self/fd")) == before


def test_guest_memory_is_phys_memory() -> None:
    mem = GuestMemory(1 << 20)
    assert isinstance(mem, PhysMemory)
    mem.write_u64(0x1000, 0x1122334455667788)
    assert mem.read(0x1000, 2) == b"\x88\x77"
    assert mem.host_address != 0
    mem.close()
    mem.close()
    with pytest.raises(PhysMemoryError):
        mem.read_u64(0x1000)


def test_guest_memory_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="4 KiB"):
        GuestMemory(1000)


# -- a real device --------------------------------------------------------------------------------


@pytest.mark.kvm
def test_kvm_handles_and_capabilities() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with Kvm() as kvm:
        assert kvm.api_version() == abi.KVM_API_VERSION
        assert kvm.vcpu_mmap_size() >= 4096
        assert kvm.require_extension(abi.KVM_CAP_USER_MEMORY, "USER_MEMORY") > 0
        with pytest.raises(KvmCapabilityError, match="lacks"):
            kvm.require_extension(999_999, "IMAGINARY")
        first = kvm.supported_cpuid()
        assert len(first) > 5
        assert [bytes(e) for e in kvm.supported_cpuid()] == [bytes(e) for e in first]
        kvm.require_machine_capabilities()
        with kvm.create_vm() as vm:
            vm.add_memory(2 << 20)
            vcpu = vm.create_vcpu()
            assert vcpu.get_regs().rip == 0xFFF0  # reset vector
            efer = 0xC000_0080
            assert vcpu.set_msrs({efer: 0}) == 1
            assert vcpu.get_msrs([efer]) == {efer: vcpu.get_sregs().efer}
            assert vcpu.translate(0x1000).valid == 1  # paging off: identity
            vcpu.set_cpuid(first)
            assert len(vcpu.get_cpuid()) >= len(first) // 2
        assert vm.closed and vcpu.closed
        vm.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("err", "name", "cls"),
    [
        (errno.ENOENT, "ENOENT", KvmUnavailableError),
        (errno.ENXIO, "ENXIO", KvmUnavailableError),
        (errno.ENODEV, "ENODEV", KvmUnavailableError),
        (errno.EACCES, "EACCES", KvmPermissionError),
        (errno.EPERM, "EPERM", KvmPermissionError),
        (errno.EISDIR, "EISDIR", KvmError),
        (errno.EMFILE, "EMFILE", KvmError),
        (errno.EBUSY, "EBUSY", KvmError),
        (errno.EIO, "EIO", KvmError),  # no advice of its own: still named
    ],
)
def test_every_open_errno_is_named(err: int, name: str, cls: type[KvmError]) -> None:
    e = open_error("/dev/kvm", OSError(err, os.strerror(err)))
    assert type(e) is cls and e.errno == err and e.op == "open"
    assert str(e).startswith("cannot open /dev/kvm: ") and name in str(e)


def _unbacked_char_device(tmp_path: os.PathLike[str]) -> str:
    """A character device node with a major number no driver has: opening it is ENXIO."""
    path = os.path.join(tmp_path, "kvm")
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(240, 77))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    return path


def test_enxio_is_named_as_such(tmp_path: os.PathLike[str]) -> None:
    path = _unbacked_char_device(tmp_path)
    with pytest.raises(KvmUnavailableError) as info:
        Kvm(path)
    assert info.value.errno == errno.ENXIO
    message = str(info.value)
    assert "ENXIO" in message and "no driver answers" in message and "missing" not in message


def test_enxio_on_the_command_line(
    tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmpage.cli import main

    path = _unbacked_char_device(tmp_path)
    for argv in (["verify"], ["host"], ["walk", "0x1000"]):
        assert main([*argv, "--device", path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ENXIO" in err and path in err
