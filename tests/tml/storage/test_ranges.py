"""Fetching chosen byte ranges of an object together (tml.storage.ranges), on moto's S3."""

import fsspec
import pytest

from tml.storage import StorageError, coalesce, fetch_ranges


def test_coalesce_merges_overlaps_and_small_gaps_only():
    # Overlapping and adjacent ranges merge; empty ones vanish; the result is sorted.
    assert coalesce([(10, 20), (0, 10), (15, 30), (40, 40)]) == [(0, 30)]
    # A gap is read when it is small next to the wanted bytes it joins ...
    assert coalesce([(0, 1000), (1050, 2000)], max_gap=100) == [(0, 2000)]
    # ... not when it is longer than max_gap, or too large a part of the merged range.
    assert coalesce([(0, 1000), (1200, 2000)], max_gap=100) == [(0, 1000), (1200, 2000)]
    assert coalesce([(0, 10), (50, 60)], max_gap=100) == [(0, 10), (50, 60)]
    # The over-read is bounded over the whole merged range, not gap by gap.
    three = [(0, 100), (110, 210), (220, 320), (330, 430)]
    assert coalesce(three, max_gap=100, max_overread=0.05) == [(0, 210), (220, 430)]
    # No merged range grows past max_range; a longer single range stays whole.
    assert coalesce([(0, 60), (61, 120), (121, 500)], max_gap=10, max_range=150) == [
        (0, 120),
        (121, 500),
    ]


def test_fetched_ranges_read_like_the_object_in_few_requests(s3_bucket, s3_server):
    data = bytes(range(256)) * 64
    fsspec.filesystem("s3").pipe(f"{s3_bucket}/object", data)
    before = s3_server.faults.requests
    fetched = fetch_ranges(
        f"{s3_bucket}/object", [(100, 200), (8000, 9000), (9010, 9100)], size=len(data)
    )
    # Two ranged GETs (the last two ranges merged), and no request for the object's size.
    assert s3_server.faults.requests - before == 2
    fetched.seek(8050)
    assert bytes(fetched.read(1000)) == data[8050:9050]
    fetched.seek(100)
    assert bytes(fetched.read(100)) == data[100:200]
    assert fetched.fetched_on_demand == 0
    # A read beyond what was announced is still right, fetched on the spot.
    fetched.seek(150)
    assert bytes(fetched.read(100)) == data[150:250]
    assert fetched.fetched_on_demand == 1
    assert fetched.seek(0, 2) == len(data) and fetched.read(5) == b""


def test_fetching_from_a_missing_object_or_bucket_names_the_url(s3_bucket):
    with pytest.raises(FileNotFoundError, match=f"^{s3_bucket}/nothing: no such file"):
        fetch_ranges(f"{s3_bucket}/nothing", [(0, 10)], size=10)
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-10r/key: no such bucket$"):
        fetch_ranges("s3://no-such-bucket-10r/key", [(0, 10)], size=10)
