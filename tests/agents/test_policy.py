"""The offline policy's reading of transcripts: numbers as speech recognisers write them, and
keypad entries."""

from __future__ import annotations

import pytest

from voicebot.agents.policy import normalize


@pytest.mark.parametrize(
    ("heard", "normalized"),
    [
        ("My PIN is one two three four.", "my pin is 1234."),
        ("My pin is 1, 2, 3, 4.", "my pin is 1234."),  # Whisper reads digits out like this
        ("My account number is 1234 5678.", "my account number is 12345678."),
        ("My account number is 12345678.", "my account number is 12345678."),
        ("I paid $1,234.56 today", "i paid $1,234.56 today"),  # a thousands separator stays
        ("fifty dollars", "50 dollars"),
        ("DTMF: 12345678#", "12345678"),  # keyed, ended with '#'
        ("DTMF: 1234", "1234"),  # keyed, ended by the keypad timeout
        ("The DTMF: 1# key", "the dtmf: 1# key"),  # only a whole keypad entry is one
    ],
)
def test_numbers_are_read_as_digits(heard: str, normalized: str) -> None:
    assert normalize(heard) == normalized
