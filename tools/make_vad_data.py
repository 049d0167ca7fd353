"""Speech data for the Silero VAD recipe (recipes/examples/silero-vad.yaml), made here: no audio ships.

Each sequence is noise, one sentence spoken by espeak-ng (several voices, speeds and levels), then noise
again, at 16 kHz, cut as Silero's own OnnxWrapper cuts a stream: 512-sample chunks, each fed with the
last 64 samples of the previous one in front (576 values). One .npz per split (calib, tune, eval) holds
one row per chunk: `input` [576] (float16 to keep the files small; quant feeds it as float32), `state`
[2, 1, 128], `sr` (16000) and `seq` (the sequence id). Sentences, voices and noise differ between the
splits, so no chunk is in two of them.

In the calibration split `state` holds FP32's own state at every step (closed-loop, recorded with the
FP32 model), so static INT8 calibrates on the states the model really carries; in tune and eval only
the first step's (zeros) is read, as quant runs them closed-loop (recipe `state`).

    apt-get install espeak-ng && pip install --no-deps silero-vad==6.2.3
    python tools/make_vad_data.py [--out calibration_data/vad]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.signal import resample_poly

RATE, CHUNK, CONTEXT = 16000, 512, 64
MODEL = "data/silero_vad_16k_op15.onnx"  # inside the silero_vad package

SENTENCES = {
    "calib": [
        "The quick brown fox jumps over the lazy dog.",
        "Please call Stella and ask her to bring these things with her from the store.",
        "A rainbow is a division of white light into many beautiful colours.",
        "She sells sea shells by the sea shore on a sunny afternoon.",
        "Twelve large boxes arrived at the station before noon.",
    ],
    "tune": [
        "We will meet at the old bridge when the clock strikes seven.",
        "Quantization makes models smaller but it must not change their answers.",
        "The library closes early on Sundays and public holidays.",
        "Turn left at the second corner and walk until you see the harbour.",
        "Fresh bread smells wonderful early in the morning.",
    ],
    "eval": [
        "Voice activity detection finds the parts of a recording that contain speech.",
        "My grandmother grew tomatoes, beans and pumpkins in her garden.",
        "The train to the airport leaves every fifteen minutes.",
        "Could you repeat the last number, please? I did not hear it.",
        "Mountains in the north were covered with snow all year.",
        "He opened the window and listened to the rain.",
        "Thirty seven people signed the letter before Friday.",
        "The concert was cancelled because of the storm.",
        "Write the answer on the back of the page.",
        "Nobody expected the small team to win the final.",
    ],
}
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029+f2", "en-gb-x-rp+m3", "en-us+f4"]
SEEDS = {"calib": 1, "tune": 2, "eval": 3}


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's speech for `text` at 16 kHz, float in [-1, 1]."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), np.int16).astype(np.float64) / 32768
    return resample_poly(samples, RATE, rate)


def noise(rng: np.random.Generator, length: int, level: float) -> np.ndarray:
    """White noise plus a slow rumble (integrated noise) and, sometimes, a mains hum."""
    white = rng.normal(0, level, length)
    rumble = np.cumsum(rng.normal(0, level / 20, length))
    rumble -= np.convolve(rumble, np.ones(801) / 801, mode="same")  # keep it from drifting away
    hum = level * 2 * np.sin(2 * np.pi * 50 * np.arange(length) / RATE) * rng.integers(0, 2)
    return white + rumble + hum


def sequence(rng: np.random.Generator, text: str, voice: str) -> np.ndarray:
    speech = speak(text, voice, int(rng.integers(140, 190)))
    speech *= rng.uniform(0.25, 0.7) / max(np.abs(speech).max(), 1e-6)
    before, after = (int(rng.uniform(0.3, 0.8) * RATE) for _ in range(2))
    audio = np.concatenate([np.zeros(before), speech, np.zeros(after)])
    audio += noise(rng, len(audio), rng.uniform(0.002, 0.02))
    return np.clip(audio, -1, 1).astype(np.float32)


def chunks(audio: np.ndarray) -> np.ndarray:
    """[steps, 576]: each 512-sample chunk with the previous 64 samples in front (zeros before the first)."""
    steps = len(audio) // CHUNK
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio[: steps * CHUNK]])
    return np.stack([padded[i * CHUNK : i * CHUNK + CHUNK + CONTEXT] for i in range(steps)])


def fp32_states(model: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    """The state FP32 is fed at each step of one sequence, closed-loop from zeros."""
    state = np.zeros((2, 1, 128), np.float32)
    states = []
    for row in rows:
        states.append(state)
        _, state = model.run(None, {"input": row[None].astype(np.float32), "state": state, "sr": np.array(RATE, np.int64)})
    return np.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "calibration_data" / "vad")
    args = parser.parse_args()
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps silero-vad==6.2.3"
    model = ort.InferenceSession(str(Path(next(iter(spec.submodule_search_locations))) / MODEL), providers=["CPUExecutionProvider"])
    args.out.mkdir(parents=True, exist_ok=True)
    for split, sentences in SENTENCES.items():
        rng = np.random.default_rng(SEEDS[split])
        inputs, states, ids = [], [], []
        for number, text in enumerate(sentences):
            rows = chunks(sequence(rng, text, VOICES[(number + SEEDS[split]) % len(VOICES)]))
            inputs.append(rows)
            states.append(fp32_states(model, rows) if split == "calib" else np.zeros((len(rows), 2, 1, 128), np.float32))
            ids.append(np.full(len(rows), number, np.int32))
        np.savez_compressed(
            args.out / f"{split}.npz",
            input=np.concatenate(inputs).astype(np.float16),
            state=np.concatenate(states).astype(np.float16),
            sr=np.full(sum(len(r) for r in inputs), RATE, np.int64),
            seq=np.concatenate(ids),
        )
        print(f"{split}: {len(sentences)} sequences, {sum(len(r) for r in inputs)} chunks -> {args.out / f'{split}.npz'}")


if __name__ == "__main__":
    main()
