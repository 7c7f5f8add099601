"""Moved to `kvmpage.paging.leaves` (the bulk enumeration belongs with the walk); this name
stays for existing imports."""

from kvmpage.paging.leaves import Leaf, LeafGroup, scan, scan_groups, table_frames
from kvmpage.paging.walk import Rights

__all__ = ["Leaf", "LeafGroup", "Rights", "scan", "scan_groups", "table_frames"]
