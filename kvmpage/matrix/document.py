"""The matrix report as people read it and as JSON (``kvmpage matrix --json``), and the merge of
several shards' JSON documents into one (``kvmpage matrix --merge A.json B.json ...``).

The JSON document is self-contained: a merge needs nothing but the documents. It carries the
selection (so shards of different selections are refused), the host of each part (shards may
run on different CPUs: that is the point), every count, the disagreements (the first ``limit``
in full, all of them in ``summary``), and the values each dimension covered.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kvmpage.matrix import dims
from kvmpage.matrix.report import dimensions_json, summary_json
from kvmpage.matrix.run import MatrixResult

COMMAND = "matrix"


def host_json(result: MatrixResult) -> dict[str, Any]:
    h = result.host
    return {
        "hypervisor": h.kind,
        "oracles": {"cpl3": h.cpl3_oracle, "cpl0": h.cpl0_oracle},
        "maxphyaddr": h.maxphyaddr,
        "gbpages": h.gbpages_work,
    }


def to_json(result: MatrixResult, exit_code: int) -> dict[str, Any]:
    """The ``--json`` document of one run (without ``schema_version``, which `emit_json` adds)."""
    t = result.totals
    skipped = Counter(t.skipped)
    skipped.update(result.filtered)
    return {
        "command": COMMAND,
        "exit_code": exit_code,
        "selection": {**result.selection.as_json(), "jobs": result.jobs},
        "hosts": [host_json(result)],
        "combinations": t.checked,
        "oracles": dict(sorted(t.oracles.items())),
        "probes": t.probes,
        "runs": t.runs,
        "disagreement_count": t.disagreement_count,
        "disagreements": [d.as_json() for d in t.disagreements],
        "summary": summary_json(t.groups),
        "skipped": dict(sorted(skipped.items())),
        "unavailable": dict(sorted(result.host.unavailable.items())),
        "dimensions": dimensions_json(t.covered(), result.host.unavailable),
        "seconds": round(result.seconds, 3),
        "guest_seconds": round(t.guest_seconds, 3),
        "host_seconds": round(t.host_seconds, 3),
        "rate": round(t.checked / result.seconds) if result.seconds > 0 else 0,
    }


def format_text(result: MatrixResult, shown: int = 10) -> list[str]:
    """The report for people: what ran, where, the verdict, then the failures grouped."""
    t = result.totals
    h = result.host
    lines = [
        f"matrix: {result.selection.describe()}; host {h.kind} (CPL3: {h.cpl3_oracle}, "
        f"CPL0: {h.cpl0_oracle}), MAXPHYADDR {h.maxphyaddr}"
        + (f", {result.jobs} jobs" if result.jobs > 1 else ""),
    ]
    oracles = ", ".join(f"{o} {n:,}" for o, n in sorted(t.oracles.items()))
    rate = t.checked / result.seconds if result.seconds > 0 else 0.0
    lines.append(
        f"checked {t.checked:,} combinations ({oracles}) in {result.seconds:.1f} s, "
        f"{rate:,.0f}/s; {t.probes:,} probes in {t.runs:,} runs (guest {t.guest_seconds:.1f} s, "
        f"host CPU {t.host_seconds:.1f} s, overlapped)"
    )
    skipped = Counter(t.skipped)
    skipped.update(result.filtered)
    if skipped:
        lines.append(f"skipped {sum(skipped.values()):,}:")
        lines += [f"  {n:>12,}  {why}" for why, n in skipped.most_common()]
    if h.unavailable:
        lines.append("not checkable here (the evidence: kvmpage host):")
        lines += [f"  {name}: {why}" for name, why in sorted(h.unavailable.items())]
    lines.append(_coverage_line(result))
    if not t.disagreement_count:
        lines.append(f"hardware agrees: 0 disagreements in {t.checked:,} combinations")
        return lines
    lines.append(f"DISAGREEMENTS: {t.disagreement_count:,}, by (field, expected, actual):")
    for (f, e, a), n in sorted(t.groups.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {n:>10,}  {f:<18} expected {e:<26} actual {a}")
    lines.append(f"the first {min(shown, len(t.disagreements))} in full:")
    for d in t.disagreements[:shown]:
        lines += ["  " + line for line in d.format().splitlines()]
    return lines


def _coverage_line(result: MatrixResult) -> str:
    covered = result.totals.covered()
    by_reason: dict[str, list[str]] = {}
    for name, entry in dimensions_json(covered, result.host.unavailable).items():
        for value, why in entry["missing"].items():
            by_reason.setdefault(why, []).append(f"{name}={value}")
    n = sum(len(d.values) for d in dims.DIMENSIONS)
    missing = sum(len(v) for v in by_reason.values())
    head = f"dimensions: {len(dims.DIMENSIONS)}, "
    if not missing:
        return head + f"all {n} values covered"
    why = "; ".join(f"{_abbreviate(values)} ({reason})" for reason, values in by_reason.items())
    return head + f"{n - missing} of {n} values covered; not covered: {why}"


def _abbreviate(items: list[str], limit: int = 4) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return f"{items[0]} ... {items[-1]} ({len(items)} values)"


# -- merging shards ---------------------------------------------------------------------------


class MergeError(ValueError):
    """The documents cannot be merged (not matrix reports, different selections, a shard twice)."""


def merge(docs: list[tuple[str, dict[str, Any]]], limit: int) -> dict[str, Any]:
    """One report from the JSON documents of shards of one selection (``(name, document)``)."""
    if not docs:
        raise MergeError("nothing to merge")
    for name, doc in docs:
        if doc.get("command") != COMMAND or "selection" not in doc:
            why = doc.get("error") if doc.get("exit_code") == 2 else None
            raise MergeError(
                f"{name}: not a kvmpage matrix report" + (f" (it says: {why})" if why else "")
            )
    base = _selection_key(docs[0][1])
    seen: dict[int, str] = {}
    for name, doc in docs:
        if _selection_key(doc) != base:
            raise MergeError(
                f"{name}: a different selection ({_describe_key(_selection_key(doc))}) than "
                f"{docs[0][0]} ({_describe_key(base)})"
            )
        k = doc["selection"]["shard"]["index"]
        if k in seen:
            raise MergeError(f"{name} and {seen[k]} are both shard {k}")
        seen[k] = name
    count = base[3]
    out: dict[str, Any] = {
        "command": COMMAND,
        "selection": {
            **docs[0][1]["selection"],
            "shard": {"index": 0, "count": count},
            "jobs": max(d["selection"].get("jobs", 1) for _, d in docs),
        },
        "merged": [name for name, _ in docs],
        "shards": {
            "count": count,
            "present": sorted(seen),
            "missing": [k for k in range(1, count + 1) if k not in seen],
        },
        "hosts": _unique([h for _, d in docs for h in d["hosts"]]),
    }
    for key in ("combinations", "probes", "runs", "disagreement_count"):
        out[key] = sum(d[key] for _, d in docs)
    out["oracles"] = _sum_dicts(d["oracles"] for _, d in docs)
    out["skipped"] = _sum_dicts(d["skipped"] for _, d in docs)
    out["disagreements"] = [x for _, d in docs for x in d["disagreements"]][:limit]
    groups: Counter[tuple[str, str, str]] = Counter()
    for _, d in docs:
        for g in d["summary"]:
            groups[g["field"], g["expected"], g["actual"]] += g["count"]
    out["summary"] = summary_json(groups)
    unavailable: dict[str, str] = {}
    for _, d in docs:
        for feature, why in d["unavailable"].items():
            unavailable.setdefault(feature, why)
    out["unavailable"] = dict(sorted(unavailable.items()))
    covered: dict[str, set[str]] = {name: set() for name in dims.NAMES}
    for _, d in docs:
        for name, entry in d["dimensions"].items():
            covered.setdefault(name, set()).update(entry["covered"])
    out["dimensions"] = dimensions_json(covered, unavailable)
    out["seconds"] = round(max(d["seconds"] for _, d in docs), 3)
    for key in ("guest_seconds", "host_seconds"):
        out[key] = round(sum(d.get(key, 0.0) for _, d in docs), 3)
    out["seconds_total"] = round(sum(d.get("seconds_total", d["seconds"]) for _, d in docs), 3)
    out["rate"] = round(out["combinations"] / out["seconds"]) if out["seconds"] > 0 else 0
    return out


def merged_exit_code(doc: dict[str, Any], inputs: list[dict[str, Any]]) -> int:
    """2 when a shard is missing or could not run; else 1 on any disagreement, else 0."""
    if doc["shards"]["missing"] or any(d.get("exit_code") == 2 for d in inputs):
        return 2
    return 1 if doc["disagreement_count"] else 0


def _selection_key(doc: dict[str, Any]) -> tuple[Any, ...]:
    s = doc["selection"]
    return (s["mode"], s["sample"], s["seed"], s["shard"]["count"])


def _describe_key(key: tuple[Any, ...]) -> str:
    mode, sample, seed, count = key
    what = f"sample of {sample}" if mode == "sample" else "full"
    return f"{what}, seed {seed}, {count} shards"


def _sum_dicts(items: Any) -> dict[str, int]:
    total: Counter[str] = Counter()
    for item in items:
        total.update(item)
    return dict(sorted(total.items()))


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def merged_text(doc: dict[str, Any], shown: int = 10) -> list[str]:
    """The merged report for people."""
    lines = [
        f"matrix: merged {len(doc['merged'])} report(s) of shards "
        f"{', '.join(map(str, doc['shards']['present']))} of {doc['shards']['count']}",
        f"checked {doc['combinations']:,} combinations "
        f"({', '.join(f'{o} {n:,}' for o, n in doc['oracles'].items())}); "
        f"{doc['seconds']:.1f} s for the slowest part, {doc['seconds_total']:.1f} s in all",
    ]
    if doc["shards"]["missing"]:
        lines.append(f"MISSING shards: {', '.join(map(str, doc['shards']['missing']))}")
    if doc["skipped"]:
        lines.append(f"skipped {sum(doc['skipped'].values()):,}:")
        lines += [f"  {n:>12,}  {why}" for why, n in doc["skipped"].items()]
    for host in doc["hosts"]:
        lines.append(
            f"host: {host['hypervisor']} (CPL3: {host['oracles']['cpl3']}, CPL0: "
            f"{host['oracles']['cpl0']}), MAXPHYADDR {host['maxphyaddr']}"
        )
    if doc["unavailable"]:
        lines.append("not checkable (on some part): " + ", ".join(doc["unavailable"]))
    if not doc["disagreement_count"]:
        lines.append(f"hardware agrees: 0 disagreements in {doc['combinations']:,} combinations")
        return lines
    lines.append(f"DISAGREEMENTS: {doc['disagreement_count']:,}, by (field, expected, actual):")
    for g in doc["summary"]:
        lines.append(
            f"  {g['count']:>10,}  {g['field']:<18} expected {g['expected']:<26} "
            f"actual {g['actual']}"
        )
    for d in doc["disagreements"][:shown]:
        lines.append(f"  {d['field']}: expected {d['expected']}, got {d['actual']} "
                     f"[{d['oracle']}] at {d['va']}: {d['text']}")  # fmt: skip
    return lines
