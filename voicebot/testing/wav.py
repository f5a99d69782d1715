"""WAV files in and out, as PCM16 mono at the rate a pipeline wants."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import numpy as np
import soxr


def sample(name: str) -> Path:
    """A caller turn shipped with voicebot: ``help_bill``, ``balance`` or ``hello`` (16 kHz)."""
    path = Path(str(files("voicebot.testing").joinpath("data", f"{name}.wav")))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.wav"))
        raise FileNotFoundError(f"no sample {name!r}; samples: {', '.join(known)}")
    return path


def read_wav(path: str | Path, rate: int) -> bytes:
    """PCM16 mono at ``rate`` Hz from a 16-bit WAV (any rate, mono or stereo)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, source_rate = wav.getnchannels(), wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate)
    return bytes(samples.astype(np.int16).tobytes())


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    """Write PCM16 mono ``pcm`` at ``rate`` Hz."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def frame_bytes(rate: int, frame_ms: int = 20) -> int:
    """Bytes in one PCM16 mono frame of ``frame_ms`` at ``rate`` Hz (640 for 20 ms at 16 kHz)."""
    return rate * frame_ms // 1000 * 2


def split_frames(pcm: bytes, rate: int, frame_ms: int = 20) -> Iterator[bytes]:
    """``pcm`` in frames of ``frame_ms``; the last one is padded with silence."""
    size = frame_bytes(rate, frame_ms)
    for start in range(0, len(pcm), size):
        chunk = pcm[start : start + size]
        yield chunk + b"\x00" * (size - len(chunk))


def silence(ms: float, rate: int) -> bytes:
    """``ms`` of PCM16 silence at ``rate`` Hz."""
    return b"\x00\x00" * round(ms * rate / 1000)
