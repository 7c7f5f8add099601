"""``kvmpage matrix``: the complete permission matrix of x86-64 paging, checked on the CPU.

Every combination of entry bits at every level (P, W, U, NX, A, D, PS, one reserved bit at a
time, attribute bits the walk must ignore), CPU state (CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP,
RFLAGS.AC) and access (CPL0/CPL3 x read/write/fetch, once or after a priming read) is built as
fresh page tables in a KVM guest, probed, and compared with the permission model
(`kvmpage.paging.access.evaluate`): fault or not, the exact error code, CR2, the frame reached,
and the A/D bits of every entry of the walk.

    from kvmpage.matrix import Selection, run_matrix
    result = run_matrix(Selection("sample", 20000, seed=1))
    assert result.totals.disagreement_count == 0

Modules: `dims` (the dimensions, what a combination means), `cover` (pairwise covering array),
`select` (sample, full, shards), `hostfacts` (what this host can run), `expect` (the model's
answers), `arena` (guest memory: fresh tables, tagged frames), `engine` (batches, the
pipeline), `check` (the comparisons), `report`, `run` (`run_matrix`, ``--jobs``), `document`
(text, JSON, ``--merge``).
"""

from kvmpage.matrix.dims import DIMENSIONS, Dimension, Row
from kvmpage.matrix.report import Disagreement, Totals
from kvmpage.matrix.run import MatrixResult, run_matrix
from kvmpage.matrix.select import Selection

__all__ = [
    "DIMENSIONS",
    "Dimension",
    "Disagreement",
    "MatrixResult",
    "Row",
    "Selection",
    "Totals",
    "run_matrix",
]
