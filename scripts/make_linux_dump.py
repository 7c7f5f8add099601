#!/usr/bin/env python3
"""Build real test data for kvmpage's image commands: memory dumps of a small Linux guest.

kvmpage reads x86-64 page tables out of memory images. This script makes the acceptance
standard for that reader: it boots a real Debian 6.1 kernel under QEMU (TCG, never KVM), lets
a small user process map memory with different rights and spin in user mode, stops the VM,
and saves, all from that one stopped moment:

    dump.elf            QMP dump-guest-memory, ELF, paging=false (PT_LOADs = guest RAM,
                        per-CPU notes: CORE/NT_PRSTATUS + QEMU state incl. CR3, VMCOREINFO)
    raw.bin             HMP `pmemsave 0 0x10000000`: the flat physical image (256 MiB)
    dump.kdump-zlib     dump-guest-memory format=kdump-zlib (kvmpage must reject it clearly)
    info-tlb.txt        HMP `info tlb`    } QEMU's own walk of the page tables of the CR3
    info-mem.txt        HMP `info mem`    } the CPU was using at the stop
    info-registers.txt  HMP `info registers` (taken after the dumps; must equal the first one)
    info-registers-at-stop.txt   `info registers` right after the final `stop`
    info-mtree-f.txt    HMP `info mtree -f`
    serial.log          the guest's serial console (kernel messages, the worker's REGION lines,
                        its /proc/self/maps, READY)
    qemu.log            QEMU's stdout/stderr
    meta.json           scenario, kernel, command lines, CR0/CR2/CR3/CR4/EFER, CPL at stop,
                        QEMU version, regions, sizes and sha256 of every file

The full dumps are too big for the repository (256 MiB each); the tests use stripped copies
made from them (only the pages the page-table walks need). Keep the full files in scratch.

Steps, in order:
  1. apt-get install -y qemu-system-x86 gcc libc6-dev (only what is missing).
  2. apt-get download the newest linux-image-6.1.0-N-amd64 (or --kernel-package) and unpack it
     with dpkg-deb -x into the build directory (nothing is installed system-wide); take
     boot/vmlinuz-* and drivers/firmware/qemu_fw_cfg.ko (the guest needs that module to publish
     its VMCOREINFO through QEMU's `-device vmcoreinfo`).
  3. gcc -static -O2 the embedded C program GUEST_C into /init, and pack a cpio newc + gzip
     initramfs: /init, /qemu_fw_cfg.ko, /dev/console, /proc, /sys.
  4. Per scenario: boot qemu-system-x86_64 -accel tcg -m 256M -smp 1 -nodefaults -display none
     -serial file:serial.log -qmp unix:qmp.sock -device vmcoreinfo -kernel -initrd -append.
     /init mounts proc/sys/devtmpfs, loads qemu_fw_cfg.ko, turns THP on ("madvise": the kernel
     turns it off below 512 MiB of RAM), forks the worker. The worker maps
     fixed regions (read-only, zero page, 4 MiB read-write, executable, W+X, memfd mapped twice,
     THP 2 MiB, PROT_NONE, a 56-bit address under LA57), writes a tag at the start of every page
     ("KVMPAGE <region> page <n> va <addr>"), prints them, prints READY and spins forever in user
     mode with no system call.
  5. When READY is on the serial console: QMP `stop`; HMP `info registers`; if CPL != 3 (the
     CPU was in the kernel, e.g. in a timer interrupt) `cont`, sleep, `stop` again, up to 50
     times. Then, still stopped: info tlb, info mem, info mtree -f, pmemsave, dump-guest-memory
     (ELF), dump-guest-memory (kdump-zlib), each dump polled with query-dump until completed;
     `info registers` once more to prove the VM did not move; `quit`.
  6. Write meta.json.

Scenarios (--scenario, repeatable, default all):
  pti     -cpu max,la57=off  console=ttyS0 pti=on nokaslr   (4-level, KPTI: user PGD at stop)
  nopti   -cpu max,la57=off  console=ttyS0 pti=off          (4-level, KASLR on)
  la57    -cpu max,la57=on   console=ttyS0 pti=off nokaslr  (5-level paging, CR4.LA57)

What the data showed with QEMU 7.2 (Debian 1:7.2+dfsg-7+deb12u18) and kernel 6.1.0-57:
  - dump.elf: e_ehsize is 8 (a QEMU 7.2 bug; it is 64), the section headers (NULL, .shstrtab
    at the end of the file) sit between the ELF header and the program headers, and the PT_LOAD
    p_offsets are NOT congruent to p_paddr modulo 4096 (e.g. offset 0x1170 for paddr 0).
    PT_LOADs: RAM 0-0x10000000 and the BIOS ROM at 0xfffc0000 (256 KiB). p_vaddr is 0.
  - dump.kdump-zlib is the *flattened* makedumpfile format ("makedumpfile" at offset 0, the
    "KDUMP   " header inside the first data record at 0x1010), not a plain diskdump file.
  - `info mem` prints nothing under LA57 (QEMU 7.2 bug in mem_info_la57); `info tlb` is right.
  - TCG's -cpu max has no PCID here: CR4.PCIDE=0, the CR3 low 12 bits are 0.

Usage:
    python3 scripts/make_linux_dump.py --out /work/scratch/images [--scenario pti ...]

Python 3.11, standard library only. Needs root for apt-get (skip it with --no-apt when the
tools are there) and about 1 GiB of disk per scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RAM_BYTES = 256 * 1024 * 1024
READY_TIMEOUT = 900.0  # seconds; a TCG boot of a distribution kernel takes ~30 s to minutes
DUMP_TIMEOUT = 600.0
MAX_STOP_TRIES = 50

SCENARIOS: dict[str, dict[str, str]] = {
    "pti": {
        "cpu": "max,la57=off",
        "append": "console=ttyS0 pti=on nokaslr quiet panic=-1",
        "about": "4-level paging, KPTI on, KASLR off: user mode runs on the user PGD",
    },
    "nopti": {
        "cpu": "max,la57=off",
        "append": "console=ttyS0 pti=off quiet panic=-1",
        "about": "4-level paging, KPTI off, KASLR on: one PGD with user and kernel halves",
    },
    "la57": {
        "cpu": "max,la57=on",
        "append": "console=ttyS0 pti=off nokaslr quiet panic=-1",
        "about": "5-level paging (CR4.LA57), KPTI off, KASLR off",
    },
}

# The guest: /init (PID 1) and, forked from it, the worker that maps memory and spins.
GUEST_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define PG 4096UL

static const char rodata_blob[4 * 4096] __attribute__((aligned(4096))) = "KVMPAGE rodata blob";
static char data_blob[4 * 4096] __attribute__((aligned(4096))) = "KVMPAGE data blob";
static char bss_blob[8 * 4096] __attribute__((aligned(4096)));
static volatile unsigned long spin_counter;
static volatile unsigned long sink;

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vdprintf(1, fmt, ap);
    va_end(ap);
}

static void cat(const char *path)
{
    char buf[4096];
    int fd = open(path, O_RDONLY);
    ssize_t n;
    if (fd < 0) {
        out("cannot open %s: %s\n", path, strerror(errno));
        return;
    }
    while ((n = read(fd, buf, sizeof buf)) > 0)
        write(1, buf, n);
    close(fd);
}

static void tag_page(char *p, const char *name, unsigned long i)
{
    snprintf(p, 64, "KVMPAGE %s page %lu va %#lx", name, i, (unsigned long)p);
}

static char *map_at(const char *name, unsigned long addr, size_t len, int prot, int flags,
                    int fd)
{
    void *p = mmap((void *)addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, 0);
    if (p == MAP_FAILED || (unsigned long)p != addr) {
        out("REGION-SKIPPED name=%s addr=%#lx error=%s\n", name, addr,
            p == MAP_FAILED ? strerror(errno) : "placed elsewhere");
        if (p != MAP_FAILED)
            munmap(p, len);
        return NULL;
    }
    return p;
}

static void region(const char *name, const void *addr, size_t size, const char *prot,
                   const char *kind, unsigned long touched)
{
    out("REGION name=%s addr=%#lx size=%#lx prot=%s kind=%s touched=%lu\n", name,
        (unsigned long)addr, (unsigned long)size, prot, kind, touched);
}

static void make_code(unsigned char *p, unsigned int value)
{
    p[0] = 0xb8; /* mov eax, imm32 */
    memcpy(p + 1, &value, 4);
    p[5] = 0xc3; /* ret */
}

static int worker(void)
{
    unsigned long i, n;
    char *p;

    /* ro: written once, then mprotect(PROT_READ) */
    n = 16;
    p = map_at("ro", 0x10000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        for (i = 0; i < n; i++)
            tag_page(p + i * PG, "ro", i);
        mprotect(p, n * PG, PROT_READ);
        for (i = 0; i < n; i++)
            sink += p[i * PG];
        region("ro", p, n * PG, "r--", "anon-private", n);
    }

    /* zero: PROT_READ, only read: every page maps the shared zero page */
    n = 8;
    p = map_at("zero", 0x10100000UL, n * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        for (i = 0; i < n; i++)
            sink += p[i * PG];
        region("zero", p, n * PG, "r--", "anon-private-zero-page", n);
    }

    /* rw: 4 MiB read-write, 4 KiB pages (THP refused), every page written */
    n = 1024;
    p = map_at("rw", 0x20000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        madvise(p, n * PG, MADV_NOHUGEPAGE);
        for (i = 0; i < n; i++)
            tag_page(p + i * PG, "rw", i);
        region("rw", p, n * PG, "rw-", "anon-private-4k", n);
    }

    /* exec: code written, then mprotect(PROT_READ|PROT_EXEC), then called */
    n = 2;
    p = map_at("exec", 0x30000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        for (i = 0; i < n; i++) {
            make_code((unsigned char *)p + i * PG, 0x4b500000u + i);
            tag_page(p + i * PG + 64, "exec", i);
        }
        mprotect(p, n * PG, PROT_READ | PROT_EXEC);
        for (i = 0; i < n; i++) {
            unsigned int r = ((unsigned int (*)(void))(p + i * PG))();
            if (r != 0x4b500000u + i)
                out("exec page %lu returned %#x\n", i, r);
        }
        region("exec", p, n * PG, "r-x", "anon-private", n);
    }

    /* wx: one read-write-execute page (for W+X audits) */
    n = 1;
    p = map_at("wx", 0x30100000UL, n * PG, PROT_READ | PROT_WRITE | PROT_EXEC,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        make_code((unsigned char *)p, 0x4b570000u);
        tag_page(p + 64, "wx", 0);
        sink += ((unsigned int (*)(void))p)();
        region("wx", p, n * PG, "rwx", "anon-private", n);
    }

    /* shared: one memfd mapped twice, read-write and read-only: same frames */
    n = 4;
    int fd = (int)syscall(SYS_memfd_create, "kvmpage-shared", 0);
    if (fd >= 0 && ftruncate(fd, n * PG) == 0) {
        char *a = map_at("shared-rw", 0x40000000UL, n * PG, PROT_READ | PROT_WRITE,
                         MAP_SHARED, fd);
        char *b = map_at("shared-ro", 0x40100000UL, n * PG, PROT_READ, MAP_SHARED, fd);
        if (a) {
            for (i = 0; i < n; i++)
                tag_page(a + i * PG, "shared", i);
            region("shared-rw", a, n * PG, "rw-", "memfd-shared", n);
        }
        if (b) {
            for (i = 0; i < n; i++)
                sink += b[i * PG];
            if (a && memcmp(a, b, n * PG) != 0)
                out("shared mappings differ!\n");
            region("shared-ro", b, n * PG, "r--", "memfd-shared", n);
        }
    } else {
        out("REGION-SKIPPED name=shared error=memfd: %s\n", strerror(errno));
    }

    /* huge: 4 MiB, 2 MiB aligned, MADV_HUGEPAGE: transparent huge pages if the kernel can */
    n = 1024;
    p = map_at("huge", 0x50000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        madvise(p, n * PG, MADV_HUGEPAGE);
        for (i = 0; i < n; i++)
            tag_page(p + i * PG, "huge", i);
        region("huge", p, n * PG, "rw-", "anon-private-thp", n);
    }

    /* guard: PROT_NONE, a VMA with no page-table entries */
    n = 4;
    p = map_at("none", 0x60000000UL, n * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p)
        region("none", p, n * PG, "---", "anon-private-prot-none", 0);

    /* high47: just below the top of the 47-bit user half */
    n = 2;
    p = map_at("high47", 0x7ff000000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        for (i = 0; i < n; i++)
            tag_page(p + i * PG, "high47", i);
        region("high47", p, n * PG, "rw-", "anon-private", n);
    }

    /* high56: above 47 bits, only possible with 5-level paging */
    n = 2;
    p = map_at("high56", 0x0080000000000000UL, n * PG, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (p) {
        for (i = 0; i < n; i++)
            tag_page(p + i * PG, "high56", i);
        region("high56", p, n * PG, "rw-", "anon-private", n);
    }

    /* the program's own image: rodata read, data and bss written */
    for (i = 0; i < sizeof rodata_blob / PG; i++)
        sink += rodata_blob[i * PG];
    region("image-rodata", rodata_blob, sizeof rodata_blob, "r--", "elf-rodata", 4);
    for (i = 0; i < sizeof data_blob / PG; i++)
        tag_page(data_blob + i * PG, "data", i);
    region("image-data", data_blob, sizeof data_blob, "rw-", "elf-data", 4);
    for (i = 0; i < sizeof bss_blob / PG; i++)
        tag_page(bss_blob + i * PG, "bss", i);
    region("image-bss", bss_blob, sizeof bss_blob, "rw-", "elf-bss", 8);
    region("spin-counter", (const void *)&spin_counter, sizeof spin_counter, "rw-",
           "elf-bss-variable", 1);

    struct utsname u;
    if (uname(&u) == 0)
        out("UNAME %s %s %s %s\n", u.sysname, u.release, u.version, u.machine);
    out("CMDLINE ");
    cat("/proc/cmdline");
    out("THP ");
    cat("/sys/kernel/mm/transparent_hugepage/enabled");
    out("MAPS-BEGIN pid=%d\n", getpid());
    cat("/proc/self/maps");
    out("MAPS-END\n");
    out("SMAPS-ROLLUP-BEGIN\n");
    cat("/proc/self/smaps_rollup");
    out("SMAPS-ROLLUP-END\n");
    out("READY pid=%d\n", getpid());
    for (;;)
        spin_counter++;
    return 0;
}

int main(void)
{
    if (getpid() != 1)
        return worker();

    mkdir("/proc", 0755);
    mkdir("/sys", 0755);
    mkdir("/dev", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) == 0 || access("/dev/console", F_OK) == 0) {
        int c = open("/dev/console", O_RDWR);
        if (c >= 0) {
            dup2(c, 0);
            dup2(c, 1);
            dup2(c, 2);
            if (c > 2)
                close(c);
        }
    }
    out("INIT kvmpage guest starting\n");

    /* the kernel turns THP off below 512 MiB of RAM: turn it on for MADV_HUGEPAGE regions */
    int t = open("/sys/kernel/mm/transparent_hugepage/enabled", O_WRONLY);
    if (t < 0 || write(t, "madvise", 7) != 7)
        out("INIT cannot enable THP: %s\n", strerror(errno));
    if (t >= 0)
        close(t);

    /* qemu_fw_cfg.ko writes the kernel's VMCOREINFO address to QEMU's vmcoreinfo device */
    int m = open("/qemu_fw_cfg.ko", O_RDONLY);
    if (m >= 0) {
        if (syscall(SYS_finit_module, m, "", 0) == 0)
            out("INIT loaded qemu_fw_cfg\n");
        else
            out("INIT finit_module(qemu_fw_cfg) failed: %s\n", strerror(errno));
        close(m);
    }
    out("INIT vmcoreinfo sysfs: %s\n",
        access("/sys/firmware/qemu_fw_cfg/by_name/etc/vmcoreinfo", F_OK) == 0 ? "present"
                                                                              : "absent");

    pid_t pid = fork();
    if (pid == 0) {
        _exit(worker());
    }
    out("INIT worker pid=%d\n", (int)pid);
    for (;;) {
        if (wait(NULL) < 0)
            pause();
    }
}
"""


def log(msg: str) -> None:
    print(f"[make_linux_dump {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"make_linux_dump: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, **kw)


# ---------------------------------------------------------------- tools and kernel


def ensure_tools(no_apt: bool) -> None:
    need = {"qemu-system-x86_64": "qemu-system-x86", "gcc": "gcc", "dpkg-deb": "dpkg"}
    missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if not Path("/usr/include/stdio.h").exists() or not list(
        Path("/usr/lib/x86_64-linux-gnu").glob("libc.a")
    ):
        missing.append("libc6-dev")
    if not missing:
        return
    if no_apt:
        die(f"missing packages {missing} and --no-apt given")
    run(["apt-get", "update", "-q"])
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing])


def newest_kernel_package() -> str:
    names = subprocess.run(
        ["apt-cache", "pkgnames", "linux-image-6.1.0-"],
        check=True,
        text=True,
        capture_output=True,
    ).stdout.split()
    found = []
    for name in names:
        m = re.fullmatch(r"linux-image-6\.1\.0-(\d+)-amd64", name)
        if m:
            found.append((int(m.group(1)), name))
    for _, name in sorted(found, reverse=True):
        pol = subprocess.run(["apt-cache", "policy", name], text=True, capture_output=True)
        if re.search(r"Candidate: (?!\(none\))", pol.stdout):
            return name
    die("no linux-image-6.1.0-N-amd64 package with a candidate version (apt-get update?)")
    raise AssertionError


def fetch_kernel(build: Path, package: str | None, no_apt: bool) -> dict[str, Any]:
    kroot = build / "kernel-root"
    debs = sorted(build.glob("linux-image-6.1.0-*-amd64_*.deb"))
    if package:
        debs = [d for d in debs if d.name.startswith(package + "_")]
    if not debs:
        if no_apt and not package:
            die("no kernel .deb in the build directory and --no-apt given")
        if not package:
            if shutil.which("apt-cache") and not no_apt:
                with contextlib.suppress(subprocess.CalledProcessError):
                    run(["apt-get", "update", "-q"], capture_output=True)
            package = newest_kernel_package()
        run(["apt-get", "-o", "APT::Sandbox::User=root", "download", package], cwd=build)
        debs = sorted(build.glob(f"{package}_*.deb"))
        if not debs:
            die(f"apt-get download {package} left no .deb in {build}")
    deb = debs[-1]
    if kroot.exists():
        shutil.rmtree(kroot)
    run(["dpkg-deb", "-x", str(deb), str(kroot)])
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        die(f"{deb} has no boot/vmlinuz-*")
    fwcfg = sorted(kroot.glob("lib/modules/*/kernel/drivers/firmware/qemu_fw_cfg.ko*"))
    info = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version"],
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    fields = dict(line.split(": ", 1) for line in info.strip().splitlines())
    return {
        "deb": str(deb),
        "package": fields.get("Package"),
        "package_version": fields.get("Version"),
        "release": vmlinuz[0].name.removeprefix("vmlinuz-"),
        "vmlinuz": vmlinuz[0],
        "qemu_fw_cfg": fwcfg[0] if fwcfg else None,
        "vmlinuz_sha256": sha256(vmlinuz[0]),
    }


# ---------------------------------------------------------------- initramfs


def cpio_entry(
    name: str,
    mode: int,
    data: bytes = b"",
    ino: int = 0,
    rdev: tuple[int, int] = (0, 0),
    nlink: int = 1,
) -> bytes:
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + namez
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def build_initramfs(build: Path, fwcfg: Path | None) -> Path:
    src = build / "init.c"
    src.write_text(GUEST_C)
    init = build / "init"
    run(["gcc", "-static", "-O2", "-Wall", "-o", str(init), str(src)])
    entries = [
        cpio_entry(".", 0o040755, ino=1, nlink=2),
        cpio_entry("dev", 0o040755, ino=2, nlink=2),
        cpio_entry("dev/console", 0o020600, ino=3, rdev=(5, 1)),
        cpio_entry("proc", 0o040755, ino=4, nlink=2),
        cpio_entry("sys", 0o040755, ino=5, nlink=2),
        cpio_entry("init", 0o100755, init.read_bytes(), ino=6),
    ]
    if fwcfg is not None:
        entries.append(cpio_entry("qemu_fw_cfg.ko", 0o100644, fwcfg.read_bytes(), ino=7))
    entries.append(cpio_entry("TRAILER!!!", 0, ino=0))
    raw = b"".join(entries)
    raw += b"\0" * (-len(raw) % 512)
    out = build / "initramfs.cpio.gz"
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    out.write_bytes(buf.getvalue())
    log(f"initramfs {out} ({out.stat().st_size} bytes; /init {init.stat().st_size} bytes)")
    return out


# ---------------------------------------------------------------- QMP


class Qmp:
    """A tiny QMP client: JSON lines over a unix socket."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    die(f"cannot connect to QMP socket {path}")
                time.sleep(0.1)
        self.sock.settimeout(DUMP_TIMEOUT)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        greeting = self._read()
        if "QMP" not in greeting:
            die(f"unexpected QMP greeting {greeting}")
        self.greeting = greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, cmd: str, **args: Any) -> Any:
        self.next_id += 1
        req: dict[str, Any] = {"execute": cmd, "id": self.next_id}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != self.next_id:
                continue
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd} failed: {msg['error']}")
            return msg.get("return")

    def hmp(self, command: str) -> str:
        out: str = self.execute("human-monitor-command", **{"command-line": command})
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------- one scenario


def parse_registers(text: str) -> dict[str, Any]:
    regs: dict[str, Any] = {}
    for name in ("CR0", "CR2", "CR3", "CR4", "EFER", "RIP", "RSP", "RFL"):
        m = re.search(rf"\b{name}=([0-9a-fA-F]+)", text)
        if m:
            regs[name.lower()] = "0x" + m.group(1).lower()
    m = re.search(r"\bCPL=(\d)", text)
    regs["cpl"] = int(m.group(1)) if m else None
    m = re.search(r"^CS =([0-9a-fA-F]{4})", text, re.M)
    regs["cs_selector"] = "0x" + m.group(1).lower() if m else None
    if regs.get("cr4"):
        cr4 = int(regs["cr4"], 16)
        regs["cr4_la57"] = bool(cr4 >> 12 & 1)
        regs["cr4_pcide"] = bool(cr4 >> 17 & 1)
    if regs.get("cr3"):
        regs["cr3_pcid"] = int(regs["cr3"], 16) & 0xFFF
    return regs


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wait_dump(qmp: Qmp, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + DUMP_TIMEOUT
    while True:
        st: dict[str, Any] = qmp.execute("query-dump")
        if st.get("status") == "completed":
            return st
        if st.get("status") == "failed":
            die(f"{what} failed: {st}")
        if time.monotonic() > deadline:
            die(f"{what} did not complete within {DUMP_TIMEOUT} s: {st}")
        time.sleep(0.2)


def wait_ready(serial: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if re.search(r"^READY pid=\d+", text, re.M):
            return text
        if proc.poll() is not None:
            die(f"QEMU exited ({proc.returncode}) before READY; serial tail:\n{text[-3000:]}")
        if "Kernel panic" in text:
            die(f"guest kernel panic before READY; serial tail:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            die(f"no READY on the serial console within {timeout} s; tail:\n{text[-3000:]}")
        time.sleep(0.5)


def parse_regions(serial: str) -> tuple[list[dict[str, Any]], list[str]]:
    regions = []
    for m in re.finditer(r"^REGION (.*)$", serial, re.M):
        fields = dict(kv.split("=", 1) for kv in m.group(1).split())
        rec: dict[str, Any] = dict(fields)
        rec["touched"] = int(fields["touched"])
        regions.append(rec)
    skipped = [m.group(0).strip() for m in re.finditer(r"^REGION-SKIPPED .*$", serial, re.M)]
    return regions, skipped


def run_scenario(
    name: str, out_root: Path, kernel: dict[str, Any], initrd: Path, ready_timeout: float
) -> dict[str, Any]:
    spec = SCENARIOS[name]
    t_start = time.monotonic()
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() or old.is_socket():
            old.unlink()
    serial = out / "serial.log"
    sock = out / "qmp.sock"
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    cmd = [
        qemu,
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-cpu",
        spec["cpu"],
        "-m",
        "256M",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial}",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{sock},server=on,wait=off",
        "-device",
        "vmcoreinfo",
        "-kernel",
        str(kernel["vmlinuz"]),
        "-initrd",
        str(initrd),
        "-append",
        spec["append"],
    ]
    log(f"scenario {name}: {spec['about']}")
    log("$ " + " ".join(cmd))
    qlog = (out / "qemu.log").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
    qmp: Qmp | None = None
    try:
        qmp = Qmp(sock)
        version = qmp.execute("query-version")
        t_boot = time.monotonic()
        serial_text = wait_ready(serial, proc, ready_timeout)
        t_ready = time.monotonic()
        log(f"scenario {name}: READY after {t_ready - t_boot:.1f} s")
        time.sleep(1.0)  # let the worker leave write() and enter its loop

        regs_text = ""
        tries = 0
        for tries in range(1, MAX_STOP_TRIES + 1):
            qmp.execute("stop")
            regs_text = qmp.hmp("info registers")
            r = parse_registers(regs_text)
            if r["cpl"] == 3 and r["cs_selector"] and int(r["cs_selector"], 16) & 3 == 3:
                break
            log(
                f"scenario {name}: stop #{tries} caught CPL "
                f"{parse_registers(regs_text)['cpl']}, continuing"
            )
            qmp.execute("cont")
            time.sleep(0.3)
        else:
            die(f"the CPU was never at CPL 3 in {MAX_STOP_TRIES} stops")
        regs = parse_registers(regs_text)
        status = qmp.execute("query-status")
        log(
            f"scenario {name}: stopped at CPL 3 after {tries} stop(s); status {status}; "
            f"CR3={regs.get('cr3')} CR4={regs.get('cr4')}"
        )
        (out / "info-registers-at-stop.txt").write_text(regs_text)

        hmp_lines = {}
        for hmp_cmd, fname in (
            ("info tlb", "info-tlb.txt"),
            ("info mem", "info-mem.txt"),
            ("info mtree -f", "info-mtree-f.txt"),
        ):
            t0 = time.monotonic()
            text = qmp.hmp(hmp_cmd)
            (out / fname).write_text(text)
            hmp_lines[fname] = len(text.splitlines())
            log(
                f"scenario {name}: {hmp_cmd} -> {fname} ({hmp_lines[fname]} lines, "
                f"{time.monotonic() - t0:.1f} s)"
            )
        notes = []
        if regs.get("cr4_la57") and hmp_lines["info-mem.txt"] == 0:
            notes.append(
                "info-mem.txt is empty: QEMU 7.2's mem_info_la57 (target/i386/monitor.c) "
                "tests the PDPT and PD entries' present bit inverted, so under 5-level paging "
                "`info mem` prints nothing (after walking garbage for ~30 s); use info-tlb.txt"
            )
            log(f"scenario {name}: warning: {notes[-1]}")

        raw = out / "raw.bin"
        res = qmp.hmp(f'pmemsave 0 {RAM_BYTES:#x} "{raw}"')  # unquoted, '/' is division
        if res.strip():
            die(f"pmemsave said: {res}")
        log(f"scenario {name}: pmemsave -> {raw}")

        elf = out / "dump.elf"
        qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{elf}", detach=True)
        wait_dump(qmp, "dump-guest-memory elf")
        log(f"scenario {name}: dump-guest-memory -> {elf}")

        kdump = out / "dump.kdump-zlib"
        qmp.execute(
            "dump-guest-memory",
            paging=False,
            protocol=f"file:{kdump}",
            format="kdump-zlib",
            detach=True,
        )
        wait_dump(qmp, "dump-guest-memory kdump-zlib")
        log(f"scenario {name}: dump-guest-memory kdump-zlib -> {kdump}")

        regs_after = qmp.hmp("info registers")
        (out / "info-registers.txt").write_text(regs_after)
        status_after = qmp.execute("query-status")
        if regs_after != regs_text:
            die("info registers changed between the stop and the end of the dumps")
        if status_after.get("running"):
            die(f"the VM was running after the dumps: {status_after}")
        serial_text = serial.read_text(errors="replace")
        with contextlib.suppress(Exception):
            qmp.execute("quit")
    finally:
        if qmp is not None:
            qmp.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        qlog.close()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()

    t_end = time.monotonic()
    regions, skipped = parse_regions(serial_text)
    uname = re.search(r"^UNAME (.*)$", serial_text, re.M)
    guest_cmdline = re.search(r"^CMDLINE (.*)$", serial_text, re.M)
    ready = re.search(r"^READY pid=(\d+)", serial_text, re.M)
    files: dict[str, dict[str, Any]] = {}
    for f in sorted(out.iterdir()):
        if f.is_file() and f.name != "meta.json":
            files[f.name] = {"size": f.stat().st_size, "sha256": sha256(f)}
    meta = {
        "scenario": name,
        "about": spec["about"],
        "generator": "scripts/make_linux_dump.py",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": {
            "package": kernel["package"],
            "package_version": kernel["package_version"],
            "release": kernel["release"],
            "uname": uname.group(1).strip() if uname else None,
            "vmlinuz_sha256": kernel["vmlinuz_sha256"],
            "command_line": spec["append"],
            "command_line_seen_by_guest": guest_cmdline.group(1).strip() if guest_cmdline else None,
        },
        "qemu": {
            "version": version,
            "package_version": qemu_package_version(),
            "command_line": cmd,
            "cpu": spec["cpu"],
            "ram_bytes": RAM_BYTES,
        },
        "registers_at_stop": regs,
        "cpl_at_stop": regs.get("cpl"),
        "stop_tries": tries,
        "worker_pid": int(ready.group(1)) if ready else None,
        "regions": regions,
        "regions_skipped": skipped,
        "hmp_lines": hmp_lines,
        "elf": elf_summary(out / "dump.elf"),
        "kdump_signature": (out / "dump.kdump-zlib").read_bytes()[:8].decode("latin-1"),
        "notes": notes,
        "timing_seconds": {
            "boot_to_ready": round(t_ready - t_boot, 1),
            "total": round(t_end - t_start, 1),
        },
        "files": files,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"scenario {name}: done in {t_end - t_start:.1f} s -> {out}")
    for fname, rec in files.items():
        log(f"  {fname:32} {rec['size']:>12}  {rec['sha256'][:16]}")
    return meta


def elf_summary(path: Path) -> dict[str, Any]:
    """Program headers and note names of an ELF64 core, as kvmpage's reader will see them."""

    with path.open("rb") as f:
        ehdr = f.read(64)
        (
            e_type,
            e_machine,
            _v,
            _entry,
            phoff,
            shoff,
            _flags,
            ehsize,
            phentsize,
            phnum,
            shentsize,
            shnum,
            shstrndx,
        ) = struct.unpack_from("<HHIQQQIHHHHHH", ehdr, 16)
        f.seek(phoff)
        phdrs = []
        notes = []
        raw_ph = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _p_flags, off, vaddr, paddr, filesz, memsz, align = struct.unpack_from(
                "<IIQQQQQQ", raw_ph, i * phentsize
            )
            kind = {1: "LOAD", 4: "NOTE"}.get(p_type, hex(p_type))
            phdrs.append(
                {
                    "type": kind,
                    "offset": off,
                    "vaddr": vaddr,
                    "paddr": paddr,
                    "filesz": filesz,
                    "memsz": memsz,
                    "align": align,
                    "offset_congruent_paddr_mod_4096": off % 4096 == paddr % 4096,
                }
            )
            if p_type == 4:
                f.seek(off)
                data = f.read(filesz)
                pos = 0
                while pos + 12 <= len(data):
                    namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                    nm = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0").decode("latin-1")
                    notes.append({"name": nm, "type": ntype, "descsz": descsz})
                    pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return {
        "e_type": e_type,
        "e_machine": e_machine,
        "e_phoff": phoff,
        "e_shoff": shoff,
        "e_ehsize": ehsize,
        "e_phnum": phnum,
        "e_shnum": shnum,
        "e_shstrndx": shstrndx,
        "e_shentsize": shentsize,
        "program_headers": phdrs,
        "notes": notes,
    }


def qemu_package_version() -> str | None:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "qemu-system-x86"], text=True, capture_output=True
    )
    return r.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output root; one subdir per scenario")
    ap.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="scenario to generate (repeatable; default: all)",
    )
    ap.add_argument("--build", type=Path, help="build/cache directory (default OUT/_build)")
    ap.add_argument("--kernel-package", help="e.g. linux-image-6.1.0-57-amd64 (default: newest)")
    ap.add_argument("--no-apt", action="store_true", help="never call apt-get")
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT,
        help=f"seconds to wait for READY (default {READY_TIMEOUT:.0f})",
    )
    args = ap.parse_args(argv)
    names = args.scenario or ["all"]
    if "all" in names:
        names = list(SCENARIOS)
    out_root: Path = args.out.resolve()
    build: Path = (args.build or out_root / "_build").resolve()
    build.mkdir(parents=True, exist_ok=True)

    ensure_tools(args.no_apt)
    kernel = fetch_kernel(build, args.kernel_package, args.no_apt)
    log(f"kernel {kernel['package']} {kernel['package_version']}: {kernel['vmlinuz']}")
    if kernel["qemu_fw_cfg"] is None:
        log("warning: no qemu_fw_cfg.ko in the kernel package: no VMCOREINFO note")
    initrd = build_initramfs(build, kernel["qemu_fw_cfg"])
    results = {}
    for name in names:
        meta = run_scenario(name, out_root, kernel, initrd, args.ready_timeout)
        results[name] = meta
    for name, meta in results.items():
        r = meta["registers_at_stop"]
        log(
            f"{name}: CPL {meta['cpl_at_stop']} CR3 {r.get('cr3')} CR4 {r.get('cr4')} "
            f"LA57 {r.get('cr4_la57')} in {meta['timing_seconds']['total']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
