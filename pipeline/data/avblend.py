"""Instance-paired built-in data: one blended digit event rendered as an image and as a sound.

In ``avdigits`` an image and a clip share only their label, so a teacher on one has nothing to
say about the particular clip. Here every pair is one event: digit class c1 blended toward a
second class c2 with weight w in [0, w_max):

- image: a real 8x8 scikit-learn digit of class c1, ``(1 - w) * img1 + w * img2`` with img2 a
  digit of class c2, plus pixel noise whose level falls with the pair's quality q in [0, 1);
- audio: the spoken word of c1 mixed with the word of c2 at the same w (both words said by one
  eSpeak NG voice, each at unit RMS, started together), placed at a random onset in a 1 s clip,
  random gain, white noise at an SNR set by the same q;
- label: c1.

The knob ``shared`` is the fraction of pairs whose (c2, w, q) are the same in both modalities;
the other pairs give the audio its own independent (c2, w, q), so at ``shared = 0`` the teacher's
modality carries nothing about the student's instance beyond its class (class-level pairing).
The independent draws are made for every pair whatever ``shared`` is: changing the knob changes
which pairs share, and nothing else (the images are identical across knob values).

Splits are disjoint by source image (both the blended image and its partner come from the split's
own stratified share of the 1,797 digits) and by voice (the eSpeak NG voice variants are
partitioned between train/val/test). Every generating parameter is saved per pair:
``image_index``/``partner_index`` (source images), ``image_partner``/``image_w``/``image_quality``,
``audio_partner``/``audio_w``/``audio_quality``, ``shared``, ``voice``, ``accent``.

Writes the dataset ``<cache_dir>/avblend-<hash>/`` (``fdkd.pipeline.data.store``: blended images as float32
``.npy``, clips as 16-bit WAV); synthesis runs in a fresh child process (``fdkd.pipeline.data.espeak``), so the
same parameters rebuild byte-identical shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.config import AVBlendConfig
from fdkd.pipeline.data.avdigits import (
    SYNTH_RATE,
    WORDS,
    _images,
    _split_voices,
    place_clip,
    resample,
    synthesize_words,
)
from fdkd.pipeline.data.dataset import SPLITS, remember, stratified_split
from fdkd.pipeline.data.kinds import ColumnSpec
from fdkd.pipeline.data.store import Column, StoreWriter, exists, npy_bytes, record_path, wav16_bytes
from fdkd.serving.preprocess import AudioFrontend

BUILDER_VERSION = 2  # 2: the on-disk store (tar shards) instead of one .npz
PRESET = "avblend"


def build_params(cfg: AVBlendConfig) -> dict:
    """Everything that determines the bytes of the dataset file."""
    from fdkd.pipeline.data.espeak import espeak_version, voice_variants

    return {"builder": BUILDER_VERSION, "preset": PRESET, "config": cfg.model_dump(mode="json"),
            "espeak": espeak_version(), "variants": voice_variants(), "frontend": AudioFrontend().to_dict()}


def dataset_path(cfg: AVBlendConfig, cache_dir: Path) -> Path:
    """The ``dataset.json`` of the dataset ``cfg`` builds."""
    return record_path(Path(cache_dir) / artifacts.DATASET.format(preset=PRESET,
                                                                  digest=artifacts.digest(build_params(cfg))))


def _pairs_per_split(total: int, fractions) -> list[int]:
    n_val, n_test = (int(round(total * f)) for f in fractions[1:])
    return [total - n_val - n_test, n_val, n_test]


def _other_class(rng: np.random.Generator, c: int, n_classes: int) -> int:
    """A class drawn uniformly from the n_classes - 1 classes other than ``c``."""
    k = int(rng.integers(n_classes - 1))
    return k + (k >= c)


def _plan(cfg: AVBlendConfig, labels: np.ndarray, image_split: np.ndarray, pools: list[list[str]],
          variants: list[str]) -> dict[str, np.ndarray]:
    """Every generating parameter of every pair (no rendering)."""
    seeds = np.random.SeedSequence([cfg.seed, 1]).spawn(3)
    rng_pick, rng_blend, rng_voice = (np.random.default_rng(s) for s in seeds)
    n_classes = len(WORDS)
    rows: dict[str, list] = {k: [] for k in ("split", "image_index", "partner_index", "image_partner", "image_w",
                                             "image_quality", "audio_partner", "audio_w", "audio_quality", "shared",
                                             "label", "voice", "accent", "rate", "pitch", "seed")}
    for s, n in enumerate(_pairs_per_split(cfg.pairs, cfg.split_fractions)):
        own = np.flatnonzero(image_split == s)
        by_class = {c: own[labels[own] == c] for c in range(n_classes)}
        primaries = np.resize(rng_pick.permutation(own), n)  # every image of the split used about equally
        for i in primaries:
            c1 = int(labels[i])
            c2 = _other_class(rng_blend, c1, n_classes)
            partner = int(rng_blend.choice(by_class[c2]))
            w, q = float(rng_blend.uniform(0, cfg.w_max)), float(rng_blend.uniform(0, 1))
            c2_alt = _other_class(rng_blend, c1, n_classes)  # the audio's own draws, used where not shared
            w_alt, q_alt = float(rng_blend.uniform(0, cfg.w_max)), float(rng_blend.uniform(0, 1))
            shared = bool(rng_blend.uniform(0, 1) < cfg.shared)
            pool = pools[s]
            for k, v in (("split", s), ("image_index", int(i)), ("partner_index", partner), ("image_partner", c2),
                         ("image_w", w), ("image_quality", q), ("audio_partner", c2 if shared else c2_alt),
                         ("audio_w", w if shared else w_alt), ("audio_quality", q if shared else q_alt),
                         ("shared", shared), ("label", c1),
                         ("voice", variants.index(pool[int(rng_voice.integers(len(pool)))])),
                         ("accent", int(rng_voice.integers(len(cfg.accents)))),
                         ("rate", int(rng_voice.integers(cfg.rate[0], cfg.rate[1] + 1))),
                         ("pitch", int(rng_voice.integers(cfg.pitch[0], cfg.pitch[1] + 1))),
                         ("seed", int(rng_voice.integers(1, 2**31 - 2)))):
                rows[k].append(v)
    dtypes = {"split": np.int8, "image_index": np.int32, "partner_index": np.int32, "image_partner": np.int64,
              "audio_partner": np.int64, "label": np.int64, "shared": np.int8, "voice": np.int16,
              "accent": np.int16, "rate": np.int16, "pitch": np.int16, "seed": np.int64}
    return {k: np.array(v, dtypes.get(k, np.float64)) for k, v in rows.items()}


def _render_images(plan: dict, images: np.ndarray, cfg: AVBlendConfig, rng: np.random.Generator,
                   max_value: float) -> np.ndarray:
    w = plan["image_w"][:, None, None, None]
    x = (1 - w) * images[plan["image_index"]] + w * images[plan["partner_index"]]
    noise_std = cfg.image_noise * max_value * (1 - plan["image_quality"])[:, None, None, None]
    x = x + rng.standard_normal(x.shape) * noise_std
    return np.clip(x, 0, max_value).astype(np.float32)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-9) if len(x) else x


def _render_audio(first: np.ndarray, second: np.ndarray, w: float, quality: float, fe: AudioFrontend,
                  rng: np.random.Generator, cfg: AVBlendConfig) -> np.ndarray:
    """Two int16 words at 22.05 kHz -> int16 1 s clip at 16 kHz: mixed at w, onset, gain, noise at SNR(q)."""
    a, b = (_unit_rms(x.astype(np.float64) / 32768.0) for x in (first, second))
    mix = np.zeros(max(len(a), len(b)))
    mix[: len(a)] += (1 - w) * a
    mix[: len(b)] += w * b
    speech = resample(mix, fe.sample_rate, SYNTH_RATE)[: fe.clip_samples]
    speech = 0.1 * speech  # unit RMS words -> a comfortable level before the random gain
    return place_clip(speech, fe.clip_samples, rng, cfg.gain_db, cfg.snr_db, quality=quality)


def build(cfg: AVBlendConfig, cache_dir: Path, *, progress=None) -> Path:
    """Build (or find in the cache) the dataset; returns its ``dataset.json``."""
    from fdkd.pipeline.data.espeak import Utterance

    params = build_params(cfg)
    out = Path(cache_dir) / artifacts.DATASET.format(preset=PRESET, digest=artifacts.digest(params))
    if exists(out):
        return record_path(out)
    images, labels, image_fe = _images("avdigits")
    rng_split, rng_voice, rng_image, rng_audio = (np.random.default_rng(s)
                                                  for s in np.random.SeedSequence(cfg.seed).spawn(4))
    image_split = stratified_split(labels, cfg.split_fractions, rng_split)
    variants = params["variants"]
    pools = _split_voices(variants, cfg.split_fractions, rng_voice)
    plan = _plan(cfg, labels, image_split, pools, variants)
    image_raw = _render_images(plan, images.astype(np.float64), cfg, rng_image, image_fe.max_value)

    utterances = []
    for k in range(len(plan["label"])):
        voice = f"{cfg.accents[plan['accent'][k]]}+{variants[plan['voice'][k]]}"
        rate, pitch, seed = int(plan["rate"][k]), int(plan["pitch"][k]), int(plan["seed"][k])
        utterances.append(Utterance(WORDS[plan["label"][k]], voice, rate, pitch, seed))
        utterances.append(Utterance(WORDS[plan["audio_partner"][k]], voice, rate, pitch, seed + 1))
    waves = synthesize_words(utterances, progress, "words")
    fe = AudioFrontend()
    meta = {
        "name": PRESET, "class_names": list(WORDS), "build": params,
        "voice_splits": dict(zip(SPLITS, pools, strict=True)), "accents": list(cfg.accents),
        "shared": cfg.shared, "w_max": cfg.w_max,
    }
    # blended images are float pixels: stored as .npy (lossless), fed to the image frontend
    columns = {"image": Column(ColumnSpec("array", shape=image_raw.shape[1:], dtype="float32"), "npy", image_fe),
               "audio": Column(ColumnSpec("audio", sample_rate=fe.sample_rate, clip_samples=fe.clip_samples), "wav",
                               fe)}
    with StoreWriter(out, columns, meta, keep_features=True) as w:
        for k in range(len(plan["label"])):
            clip = _render_audio(waves[2 * k], waves[2 * k + 1], float(plan["audio_w"][k]),
                                 float(plan["audio_quality"][k]), fe, rng_audio, cfg)
            w.add(int(plan["label"][k]), int(plan["split"][k]),
                  {"image": npy_bytes(image_raw[k]), "audio": wav16_bytes(clip, fe.sample_rate)},
                  samples={"image": image_raw[k], "audio": clip.astype(np.float32) / 32768.0})
        record = w.close({k: v for k, v in plan.items() if k not in ("rate", "pitch", "seed", "label", "split")})
    remember(record, w.features)  # the log-mel computed for the statistics serves this process's first load
    return record
