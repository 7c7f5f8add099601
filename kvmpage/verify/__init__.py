"""Verify tables against the CPU: ``report = verify(mapper, machine)``.

The package, by concept:

- `kvmpage.verify.verifier`: `Verifier` (one address space on one machine, verified as often
  as needed) and `verify` (once);
- `kvmpage.verify.probes`: what to probe (`PlanOptions`, `make_plan`, `Probe`, the tags);
- `kvmpage.verify.predict`: what the software says each probe must do (`Predictor`);
- `kvmpage.verify.targets`: where a probe may go and what it must read there;
- `kvmpage.verify.session`: running probes on a machine, table changes applied as a kernel
  would, with the mapper's flushes;
- `kvmpage.verify.bulk`: the pages of a large layout, a table at a time;
- `kvmpage.verify.compare`, `kvmpage.verify.checks`: comparing results with predictions;
- `kvmpage.verify.explain`, `kvmpage.verify.report`: disagreements explained, the report;
- `kvmpage.verify.verdicts`: per-run verdicts for a listing;
- `kvmpage.verify.image_guest`: a memory image's own tables on a machine;
- `kvmpage.verify.fuzz`, `kvmpage.verify.oracles`, `kvmpage.verify.tlb`: the differential
  campaign, several oracles at once, what an oracle without a TLB cannot show.
"""

from kvmpage.paging.access import CpuState
from kvmpage.verify.predict import Predictor
from kvmpage.verify.probes import PlanOptions, Probe
from kvmpage.verify.report import Report
from kvmpage.verify.session import MachineTlb, Session
from kvmpage.verify.targets import APIC_FETCH
from kvmpage.verify.verdicts import RunVerdict, run_verdicts, verdicts_of
from kvmpage.verify.verifier import ProbeCheck, Verifier, verify

__all__ = [
    "APIC_FETCH",
    "CpuState",
    "MachineTlb",
    "PlanOptions",
    "Predictor",
    "Probe",
    "ProbeCheck",
    "Report",
    "RunVerdict",
    "Session",
    "Verifier",
    "run_verdicts",
    "verdicts_of",
    "verify",
]
