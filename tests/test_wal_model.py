"""A hypothesis model of the write-ahead log: appends, syncs, acknowledgements,
clean reopens and crashes, checked against the real log and the disk."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from wal_support import crash, disk_bytes

from procmond.store.wal import (
    WalFullError,
    WalRecord,
    WriteAheadLog,
)


class WalModel(RuleBasedStateMachine):
    """A model of the log: what was appended, acknowledged, and synced, against the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="wal-model-"))
        self.directory = self.root / "wal"
        self.limits = {"segment_bytes": 300, "max_total_bytes": 3000}
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.records: dict[int, bytes] = {}
        self.next_seq = 1
        self.acked = 0
        self.synced_acked = 0

    @initialize()
    def start(self) -> None:
        """Open the empty log."""
        assert self.wal.open() == []

    def teardown(self) -> None:
        """Close the log and remove its directory."""
        self.wal.close()
        shutil.rmtree(self.root)

    @rule(batch=st.lists(st.binary(max_size=60), max_size=6))
    def append(self, batch: list[bytes]) -> None:
        """Append a batch; a full log changes nothing."""
        used = self.wal.bytes_used
        try:
            written = self.wal.append(batch)
        except WalFullError:
            assert (self.wal.next_seq, self.wal.bytes_used) == (self.next_seq, used)
            return
        assert [r.seq for r in written] == list(range(self.next_seq, self.next_seq + len(batch)))
        for record in written:
            self.records[record.seq] = record.payload
        self.next_seq += len(batch)

    @rule()
    def sync(self) -> None:
        """Sync: the in-memory ack becomes durable."""
        self.wal.sync()
        self.synced_acked = self.acked

    @rule(fraction=st.floats(min_value=0, max_value=1))
    def ack(self, fraction: float) -> None:
        """Acknowledge a prefix of the pending events."""
        seq = self.acked + round(fraction * (self.next_seq - 1 - self.acked))
        self.wal.ack_through(seq)
        self.acked = max(self.acked, seq)

    def check_recovered(self, pending: list[WalRecord]) -> None:
        """Recovered events are contiguous, end at the last appended, and lose nothing unacked."""
        recovered_ack = self.wal.last_acked
        assert self.synced_acked <= recovered_ack <= self.acked
        assert [r.seq for r in pending] == list(range(recovered_ack + 1, self.next_seq))
        assert all(r.payload == self.records[r.seq] for r in pending)
        assert self.wal.next_seq == self.next_seq
        assert self.wal.corrupt_records == 0
        self.acked = self.synced_acked = recovered_ack

    @rule()
    def reopen(self) -> None:
        """Close and reopen cleanly."""
        self.wal.close()
        self.synced_acked = self.acked
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.check_recovered(self.wal.open())

    @rule(sync_first=st.booleans())
    def crash(self, sync_first: bool) -> None:
        """Reopen without close, as after a crash, with or without a sync just before."""
        if sync_first:
            self.sync()
        crash(self.wal)
        self.wal = WriteAheadLog(self.directory, **self.limits)
        self.check_recovered(self.wal.open())

    @invariant()
    def counts_match(self) -> None:
        """Pending count, next seq and bytes used agree with the model and the disk."""
        assert self.wal.next_seq == self.next_seq
        assert self.wal.pending == self.next_seq - 1 - self.acked
        assert self.wal.bytes_used == disk_bytes(self.directory)


WalModel.TestCase.settings = settings(
    WalModel.TestCase.settings, stateful_step_count=40, deadline=None
)
test_wal_state_machine = WalModel.TestCase
