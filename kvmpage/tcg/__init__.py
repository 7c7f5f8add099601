"""The ``tcg`` oracle: QEMU's TCG MMU, in-process through Unicorn (``pip install kvmpage[tcg]``).

A second, independent answer to "what does an x86-64 CPU do with these tables": `TcgMachine`
offers the interface of the KVM `kvmpage.machine.Machine` that the verifier uses, so
``Verifier(mapper, TcgMachine())`` checks the same tables with the same probes, every result
labelled ``tcg``. It needs no /dev/kvm, verifies 1 GiB pages and 5-level tables (CR4.LA57),
and does not model the TLB (docs/tcg.md). Unicorn is imported only when a machine is made;
`available` says whether it can be.
"""

from kvmpage.tcg.engine import INSTALL_HINT, available
from kvmpage.tcg.errors import TcgError, TcgUnavailable
from kvmpage.tcg.machine import ORACLE, TcgMachine

__all__ = ["INSTALL_HINT", "ORACLE", "TcgError", "TcgMachine", "TcgUnavailable", "available"]
