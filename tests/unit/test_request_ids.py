"""Request ids: the key of a call's hold, usage record and ledger row (storage indexes
them), and what a caller quotes to support."""

from __future__ import annotations

import re
import time

from imagerelay.relay import new_request_id


def test_request_ids_have_the_documented_shape_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", rid) for rid in ids), ids[:3]
    assert len(set(ids)) == len(ids)


def test_request_ids_made_later_sort_after_earlier_ones() -> None:
    """Appended at the end of the indexes they key, the calls of one commit share pages."""
    earlier = [new_request_id() for _ in range(50)]
    time.sleep(0.002)  # the next millisecond
    later = [new_request_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert int(later[0][4:16], 16) >= int(earlier[-1][4:16], 16) >= int(time.time() * 1000) - 60_000
