"""What the host at hand lets the matrix check, and the evidence for what it does not.

The combinations themselves are host-independent (`kvmpage.matrix.dims`); this module turns the
host profile (`kvmpage host`: every feature tried in a guest) into the facts a run needs: the
`Features` and the reserved bits the permission model uses, the oracle of each CPL, and
`problem`, the reason a combination cannot run here (counted as skipped, never passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmpage.machine import HostProfile
from kvmpage.matrix import dims
from kvmpage.matrix.dims import Row
from kvmpage.paging.access import Features

#: Features the matrix would vary if the host had them, with what it needs.
_NOT_MODELLED = {
    "pku": "protection keys are not modelled by kvmpage's permission model",
    "la57": "the matrix builds 4-level tables only",
}


@dataclass(frozen=True)
class HostFacts:
    """The facts of one host that decide what a combination means and whether it can run."""

    kind: str
    cpl3_oracle: str
    cpl0_oracle: str
    maxphyaddr: int
    #: CPUID grants 1 GiB pages (then PS in a PDPTE is a leaf; else it is a reserved bit)
    gbpages_granted: bool
    #: a 1 GiB page works when tried in a guest
    gbpages_work: bool
    nx: bool
    smep: bool
    smap: bool
    #: PML4 slots a CPL3 access cannot use here (the hypervisor keeps them)
    blocked_slots: frozenset[int] = frozenset()
    #: feature -> evidence, for everything the matrix cannot check here
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: HostProfile) -> HostFacts:
        f = profile.features

        def works(name: str) -> bool:
            return name in f and f[name].works

        gb_granted = profile.cpuid.pdpe1gb
        unavailable: dict[str, str] = {}
        if not works("1gib-pages"):
            evidence = f["1gib-pages"].evidence if "1gib-pages" in f else "not tried"
            unavailable["1gib-pages"] = evidence + (
                "; 1 GiB leaves and their reserved bits 13-29 are not checked"
                if gb_granted
                else "; CPUID does not grant 1 GiB pages, so pdpte.ps=1 is checked as a "
                "reserved bit and bits 13-29 of a 1 GiB leaf are not checked"
            )
        for name in ("nx", "smep", "smap"):
            if not works(name):
                evidence = f[name].evidence if name in f else "not tried"
                unavailable[name] = evidence
        for name, why in _NOT_MODELLED.items():
            if name in f and f[name].works:
                unavailable[name] = f"available here, but {why}"
            else:
                evidence = f[name].evidence if name in f else "not tried"
                unavailable[name] = evidence
        if profile.cpuid.maxphyaddr >= 52:
            unavailable["reserved-address-bits"] = (
                f"MAXPHYADDR is {profile.cpuid.maxphyaddr}: no address bit is reserved"
            )
        return cls(
            kind=profile.kind.value,
            cpl3_oracle=profile.cpl3_oracle,
            cpl0_oracle=profile.cpl0_oracle,
            maxphyaddr=profile.cpuid.maxphyaddr,
            gbpages_granted=gb_granted,
            gbpages_work=works("1gib-pages") and gb_granted,
            nx=works("nx"),
            smep=works("smep"),
            smap=works("smap"),
            blocked_slots=profile.cpl3_blocked_slots,
            unavailable=unavailable,
        )

    @property
    def features(self) -> Features:
        """What the permission model is told about the CPU."""
        return Features(maxphyaddr=self.maxphyaddr, gbpages=self.gbpages_granted)

    def oracle(self, cpl: int) -> str:
        return self.cpl3_oracle if cpl == 3 else self.cpl0_oracle

    def rsvd_bit(self, name: str) -> int:
        """The bit a reserved-bit value sets (``maxphy``: the first bit above MAXPHYADDR)."""
        if name == "maxphy":
            return 1 << self.maxphyaddr
        if name == "ps":
            return dims.PS
        return 1 << int(name[1:])

    def problem(self, row: Row) -> str | None:
        """Why ``row`` (normalized, structurally sound) cannot run on this host, or None."""
        if row[dims.C_NXE] == 1 and not self.nx:
            return "unavailable: nx"
        if row[dims.C_SMEP] == 1 and not self.smep:
            return "unavailable: smep"
        if row[dims.C_SMAP] == 1 and not self.smap:
            return "unavailable: smap"
        stop = dims.stop_level(row)
        for level in dims.LEVELS[: dims.LEVELS.index(stop) + 1]:
            r = dims.rsvd_name(row, level)
            if r in ("b51", "maxphy") and self.maxphyaddr >= 52:
                return f"unavailable: {level}.rsvd={r} (MAXPHYADDR is {self.maxphyaddr})"
            if r == "maxphy" and self.maxphyaddr == 51:
                return "maxphy is bit 51 here (MAXPHYADDR 51): the same as b51"
        if stop == "pdpte" and row[dims.COL["pdpte", "ps"]] == 1:
            if self.gbpages_granted and not self.gbpages_work:
                return "unavailable: 1gib-pages"
            if not self.gbpages_granted and dims.reserved_conditions(row, "pdpte"):
                return "more than one reserved bit at a time (pdpte.ps is reserved here)"
        return None
