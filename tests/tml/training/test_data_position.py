import pytest

from tml.training.data_position import PositionTrackingIterator


class Counting:
    """A resumable stream of integers."""

    def __init__(self):
        self.next_value = 0

    def __iter__(self):
        while True:
            value = self.next_value
            self.next_value += 1
            yield value

    def state_dict(self):
        return {"next": self.next_value}

    def load_state_dict(self, state):
        self.next_value = state["next"]


def test_position_after_consumed_batches_ignores_read_ahead():
    data = Counting()
    iterator = PositionTrackingIterator(data)
    assert [next(iterator) for _ in range(5)] == [0, 1, 2, 3, 4]
    # A pipeline holding two batches ahead has consumed three.
    position = iterator.position_after(3)
    resumed = Counting()
    resumed.load_state_dict(position)
    assert next(iter(resumed)) == 3
    assert iterator.position_after(0) == {"next": 0}
    with pytest.raises(LookupError):
        iterator.position_after(42)
