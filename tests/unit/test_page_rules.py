"""How both backends cut a page: by count (first_page) and by bytes (within_budget)."""

from __future__ import annotations

from collections.abc import Iterator

from storage.rules import first_page, within_budget


def test_a_page_keeps_the_sizes_that_fit_and_names_the_first_left_out() -> None:
    assert within_budget([3, 4, 2, 5], lambda n: n, 9) == ([3, 4, 2], 5)
    assert within_budget([3, 4, 2], lambda n: n, 9) == ([3, 4, 2], None)
    assert within_budget([], lambda n: n, 9) == ([], None)


def test_the_first_item_goes_alone_whatever_its_size() -> None:
    assert within_budget([20, 1], lambda n: n, 9) == ([20], 1)


def test_nothing_after_the_item_left_out_is_taken() -> None:
    taken: list[int] = []

    def sizes() -> Iterator[int]:
        for n in (5, 5, 5, 5):
            taken.append(n)
            yield n

    assert within_budget(sizes(), lambda n: n, 7) == ([5], 5)
    assert taken == [5, 5]


def test_the_first_page_of_one_more_than_asked_says_more_follow() -> None:
    assert first_page([1, 2, 3], 2) == ([1, 2], True)
    assert first_page([1, 2], 2) == ([1, 2], False)
