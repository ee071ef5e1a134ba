"""Queue rules both backends share: the retry delay, receipts, and how an
acknowledgement by receipt is reported."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from storage.receipts import Receipt
from storage.records import AckFailure, AckFailureReason, StreamConfiguration
from storage.rules import RETRY_JITTER, classify_acks, retry_delay

POLICY = StreamConfiguration(
    retry_initial_delay=timedelta(seconds=1),
    retry_max_delay=timedelta(seconds=60),
    retry_multiplier=2.0,
)


def test_no_initial_delay_means_no_retry_delay() -> None:
    assert retry_delay(StreamConfiguration(), 3, 0.5) == timedelta(0)


@pytest.mark.parametrize(
    ("attempt", "nominal"), [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (1000, 60)]
)
def test_the_delay_grows_by_the_multiplier_up_to_the_maximum(attempt: int, nominal: float) -> None:
    middle = retry_delay(POLICY, attempt, 0.5)
    assert middle.total_seconds() == pytest.approx(nominal)


def test_the_jitter_is_ten_percent_either_way() -> None:
    low, high = retry_delay(POLICY, 3, 0.0), retry_delay(POLICY, 3, 0.999999)
    assert low.total_seconds() == pytest.approx(4 * (1 - RETRY_JITTER))
    assert high.total_seconds() == pytest.approx(4 * (1 + RETRY_JITTER), rel=1e-5)


def test_a_multiplier_of_one_keeps_the_delay_constant() -> None:
    flat = StreamConfiguration(
        retry_initial_delay=timedelta(seconds=5),
        retry_max_delay=timedelta(seconds=5),
        retry_multiplier=1.0,
    )
    assert retry_delay(flat, 500, 0.5) == timedelta(seconds=5)


def test_a_receipt_reads_back_as_written() -> None:
    receipt = Receipt(uuid.uuid4(), uuid.uuid4())
    text = str(receipt)
    assert len(text) == 43
    assert Receipt.parse(text) == receipt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "a" * 43,
        "a" * 44,
        str(Receipt(uuid.uuid4(), uuid.uuid4())) + "=",
        "!" * 43,
        "+" * 42 + "A",
        "/" * 42 + "A",
        "\u00e9" * 43,
    ],
)
def test_a_text_that_is_no_receipt_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a receipt"):
        Receipt.parse(text)


def test_acks_by_receipt_report_the_receipt() -> None:
    fresh = Receipt(uuid.uuid4(), uuid.uuid4())
    stale = Receipt(fresh.event_id, uuid.uuid4())
    gone = Receipt(uuid.uuid4(), uuid.uuid4())
    result = classify_acks([stale, fresh, gone], [fresh], [fresh.event_id])
    assert result.acknowledged == (fresh.event_id,)
    assert result.failed == (
        AckFailure(stale.event_id, AckFailureReason.NOT_HELD, stale),
        AckFailure(gone.event_id, AckFailureReason.NOT_FOUND, gone),
    )
