"""The durable spool: store-and-forward on disk between the ring queue and the outputs.

::

    ring queue ──▶ writer (core.py, writer.py) ──▶ segment files (../segment.py) ──▶ one reader per output
                                                                                     (reader.py, cursors.py)

- **Accepted means on disk.** The spool writer is the ring's only reader. It collects records for at most
  ``fsync_interval`` (or until a full write batch is there), appends them to the current segment, fsyncs,
  and only then commits the ring cursor and shows the records to the outputs. A SIGKILL or a power loss
  therefore loses at most the records of one fsync window (plus the write in progress).
- **A cursor per output.** Each :class:`SpoolReader` offers the ring's :class:`BatchSource` interface, reads
  back in batches from disk (off the event loop), and keeps its own cursor, advanced only when its output
  acknowledged a batch and persisted atomically with a checksum at most one ``fsync_interval`` later. After a
  restart a reader resumes from its cursor once it is validated against the segments held (``cursors.py``),
  else from the oldest record held: at-least-once, and a replay overwrites itself in InfluxDB, since
  timestamps are fixed at acquisition. A new output starts at the oldest record held.
- **Segments** rotate at ``segment_bytes`` (by default a 64th of what the spool may use, so that a drop sheds
  a small part of the backlog) and are deleted once every output's persisted cursor passed them.
- **Caps, never a full disk** (``caps.py``). Before each write the oldest segments are dropped while the spool
  would exceed ``max_bytes``, while its oldest segment's newest record is older than ``max_age`` (on the
  monotonic clock, so a step of the wall clock drops nothing), or while the file system would keep less than
  ``min_free`` bytes. A dropped segment is deleted at once and the free space read again before the write is
  decided. Dropped records are counted as lost for each output that had not delivered them and logged once per
  episode. Without room (nothing left to drop, a disk filled by something else) the records wait in the ring
  and the spool looks again every ``NO_ROOM_RETRY`` seconds, so writing resumes by itself; other write errors
  back off. Acquisition goes on, and the ring drops (and counts) its oldest records once full.
- **Damage costs only the damaged bytes** (``recovery.py``): see the module. Every record that cannot be given
  back is counted per output with a reason (``model.LOSS_REASONS``).
- **Memory** holds per-segment metadata, the series table of the segment each reader is in (Series objects
  are interned, one per distinct series), and one read-ahead batch per reader: not the backlog.
"""

from edge_daq.buffer.settings import SpoolSettings, default_min_free, default_segment_bytes
from edge_daq.buffer.spool.core import Spool, open_spool
from edge_daq.buffer.spool.model import Position, Segment
from edge_daq.buffer.spool.reader import SpoolReader
from edge_daq.stats import LOSS_REASONS

__all__ = [
    "LOSS_REASONS",
    "Position",
    "Segment",
    "Spool",
    "SpoolReader",
    "SpoolSettings",
    "default_min_free",
    "default_segment_bytes",
    "open_spool",
]
