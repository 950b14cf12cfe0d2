"""Calibration and evaluation data for the silero-vad voice activity detectors: a stateful model.

silero-vad reads 512 samples of 16 kHz audio at a time plus a recurrent ``state`` ([2, B, 128])
that the previous chunk returned as ``stateN``. A sample for trtq is one chunk *with the state
the model had reached there*, so the data comes from running the FP32 model over a stream and
feeding its state back — the loaders below do that, then yield ``{input: [n, 512], state:
[n, 2, 128]}`` (one sample's state is ``[2, 128]``: trtq stacks samples on the state's batch
axis, 1). ``sr`` is a constant the job gives (``inputs: {sr: {value: 16000}}``). The stream is 24 s
long (750 chunks); ``TRTQ_VAD_SECONDS`` changes that.

The audio is synthetic and deterministic: voiced stretches (a glottal pulse train at a gliding
pitch through two moving formant resonators, syllable envelopes) between silences with a little
background noise — so both the speech and the no-speech behaviour of the detector are exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("TRTQ_SHARED", ROOT.parent / "shared")) / "models"
RATE, CHUNK = 16000, 512
SECONDS, SEED = 24.0, 0


def _resonator(x: np.ndarray, freq: np.ndarray, bandwidth: float) -> np.ndarray:
    """Two-pole resonator whose centre frequency moves sample by sample."""
    r = np.exp(-np.pi * bandwidth / RATE)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / RATE), r * r
    y = np.zeros_like(x)
    for n in range(2, len(x)):
        y[n] = x[n] - a1[n] * y[n - 1] - a2 * y[n - 2]
    return y


def synth_audio(seconds: float = SECONDS, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = rng.normal(0, 0.003, n)  # background
    t = 0
    while t < n:
        t += int(rng.uniform(0.3, 1.2) * RATE)  # silence
        length = int(rng.uniform(0.6, 2.0) * RATE)
        end = min(n, t + length)
        if end <= t:
            break
        k = np.arange(end - t)
        f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * k / RATE * rng.uniform(0.5, 2)))
        phase = np.cumsum(f0 / RATE)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
        f1 = 500 + 250 * np.sin(2 * np.pi * k / RATE * rng.uniform(2, 5))
        f2 = 1500 + 600 * np.sin(2 * np.pi * k / RATE * rng.uniform(2, 5) + 1.0)
        voiced = _resonator(pulses, f1, 80) + 0.5 * _resonator(pulses, f2, 120)
        syllables = np.abs(np.sin(np.pi * k / RATE * rng.uniform(3, 6))) ** 0.5
        seg = voiced * syllables
        out[t:end] += 0.3 * seg / (np.abs(seg).max() + 1e-9)
        t = end
    return out.astype(np.float32)


def _stream(model: Path, batch: int = 32):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    audio = synth_audio(float(os.environ.get("TRTQ_VAD_SECONDS", SECONDS)))
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(RATE, np.int64)
    chunks, states = [], []
    for start in range(0, len(audio) - CHUNK + 1, CHUNK):
        x = audio[None, start:start + CHUNK]
        chunks.append(x[0])
        states.append(state[:, 0])
        _, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        if len(chunks) == batch:
            yield {"input": np.stack(chunks), "state": np.stack(states)}
            chunks, states = [], []
    if chunks:
        yield {"input": np.stack(chunks), "state": np.stack(states)}


def stream():
    """Chunks of the synthetic stream with the states of ``silero_vad.onnx`` (the If-based export)."""
    return _stream(MODELS / "silero_vad.onnx")


def stream_op15():
    """The same for ``silero_vad_16k_op15.onnx``."""
    return _stream(MODELS / "silero_vad_16k_op15.onnx")


def _fingerprint() -> str:
    return f"synthetic {os.environ.get('TRTQ_VAD_SECONDS', SECONDS)} s, seed {SEED}, chunk {CHUNK}"


stream.fingerprint = _fingerprint
stream_op15.fingerprint = _fingerprint
