"""eSpeak NG speech synthesis through ctypes (library and voices from ``espeakng-loader``).

Synchronous mode with a synth callback; libc's ``rand`` and eSpeak's own generator are seeded
per clip. eSpeak NG also keeps synthesis state across utterances (pitch flutter, resonator
phase), so a clip depends on what the same process synthesised before it. ``synthesize_batch``
therefore runs every build in a fresh child process (``python -m fdkd.pipeline.data.espeak``), in a
fixed order: the same specs give byte-identical audio, whatever the parent did before.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_PHONEMES = 0x100  # espeakPHONEMES: text may hold phoneme mnemonics in [[ ]]
_RATE, _PITCH = 1, 3


@dataclass(frozen=True)
class Utterance:
    text: str  # words, or eSpeak NG phoneme mnemonics in [[ ]] (e.g. "[['e:t]]")
    voice: str  # "<accent>+<variant>", e.g. "en-gb-scotland+f3"
    rate: int  # words per minute
    pitch: int  # 0..100
    seed: int


def voice_variants() -> list[str]:
    """Names of the voice variants shipped with the eSpeak NG data (sorted, ~100)."""
    import espeakng_loader

    return sorted(p.name for p in (Path(espeakng_loader.get_data_path()) / "voices" / "!v").iterdir())


def espeak_version() -> str:
    import espeakng_loader

    lib = Path(espeakng_loader.get_library_path()).resolve()
    return lib.name.split(".so.")[-1] if ".so." in lib.name else lib.name


class _Engine:
    """One initialised eSpeak NG library (global state: one per process)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.libc = ctypes.CDLL(None)
        home = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, home, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}); data at {home.decode()}")
        self._chunks: list[np.ndarray] = []
        self._cb = self._CALLBACK(self._collect)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, u: Utterance) -> np.ndarray:
        self._chunks.clear()
        self.libc.srand(ctypes.c_uint(u.seed))
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(u.seed))
        if self.lib.espeak_SetVoiceByName(u.voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {u.voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(u.rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(u.pitch), 0)
        text = u.text.encode()
        flags = _PHONEMES if u.text.startswith("[[") else 0
        err = self.lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {u}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def phonemes(self, text: str, voice: str) -> str:
        """eSpeak NG's phoneme mnemonics for ``text`` in ``voice`` (e.g. "eight" -> "'eIt")."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        fn = self.lib.espeak_TextToPhonemes
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        ptr = ctypes.c_char_p(text.encode())
        return fn(ctypes.byref(ptr), 1, 0).decode().strip()


def synthesize_batch(utterances: list[Utterance]) -> tuple[int, list[np.ndarray]]:
    """Synthesize in a fresh child process; returns (sample_rate, int16 waveforms).

    The child (``python -m fdkd.pipeline.data.espeak``) reads the utterances as JSON on stdin and
    writes one .npz to stdout; it imports numpy and ctypes only.
    """
    specs = json.dumps([dataclasses.asdict(u) for u in utterances]).encode()
    proc = subprocess.run([sys.executable, "-m", "fdkd.pipeline.data.espeak"], input=specs,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"eSpeak NG synthesis failed: {proc.stderr.decode(errors='replace').strip()}")
    z = np.load(io.BytesIO(proc.stdout), allow_pickle=False)
    lengths = z["lengths"]
    return int(z["rate"]), np.split(z["samples"], np.cumsum(lengths)[:-1])


def phonemize(pairs: list[tuple[str, str]]) -> list[str]:
    """eSpeak NG's phoneme mnemonics for each (text, voice), looked up in a fresh child process."""
    proc = subprocess.run([sys.executable, "-m", "fdkd.pipeline.data.espeak", "--phonemes"],
                          input=json.dumps(pairs).encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"eSpeak NG phoneme lookup failed: {proc.stderr.decode(errors='replace').strip()}")
    return json.loads(proc.stdout)


def _child_main() -> None:
    if sys.argv[1:] == ["--phonemes"]:
        engine = _Engine()
        pairs = json.loads(sys.stdin.buffer.read())
        sys.stdout.write(json.dumps([engine.phonemes(text, voice) for text, voice in pairs]))
        return
    utterances = [Utterance(**d) for d in json.loads(sys.stdin.buffer.read())]
    engine = _Engine()
    waves = [engine.say(u) for u in utterances]
    buf = io.BytesIO()
    np.savez(buf, rate=np.int64(engine.sample_rate), lengths=np.array([len(w) for w in waves], np.int64),
             samples=np.concatenate(waves) if waves else np.zeros(0, np.int16))
    sys.stdout.buffer.write(buf.getvalue())


if __name__ == "__main__":
    _child_main()
