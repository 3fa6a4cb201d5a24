"""Batched log-mel: /v1/classify's WAV clips are featurized by the batcher, one vectorized call per batch.

The identity (a batch's features equal each clip's own, to float tolerance) in numpy, then on a real
uvicorn with the real ONNX Runtime session: concurrent WAV uploads and V2 feature requests share
batches, every answer equals the one-clip-at-a-time reference, and a clip whose features would not be
finite fails alone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from fdkd.serving.batcher import DynamicBatcher, RejectedRow
from fdkd.serving.preprocess import AudioFrontend
from fdkd.serving.runtime import load_runtime
from fdkd.serving.upload import clip, features
from fdkd.serving.wav import write_wav
from tests.serving_helpers import metric, running_server

SHAPE = [1, 40, 101]


def clips(n: int, seed: int = 0) -> np.ndarray:
    """n one-second clips: a tone of its own pitch and loudness over noise, so every row differs."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    freq, gain = rng.uniform(200, 3000, n), rng.uniform(0.05, 0.9, n)
    waves = gain[:, None] * np.sin(2 * np.pi * freq[:, None] * t) + 0.01 * rng.standard_normal((n, 16000))
    return np.clip(waves, -1, 1).astype(np.float32)


def test_batched_log_mel_equals_the_per_clip_features():
    fe = AudioFrontend(mean=-3.0, std=2.5)
    waves = clips(64)
    batched = fe(waves)
    one_by_one = np.concatenate([fe(w[None]) for w in waves])
    assert batched.shape == (64, *SHAPE) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    # the server's two steps (WAV -> checked clip, then the batch's log-mel) give the upload path's features
    bodies = [write_wav(w, 16000) for w in waves[:8]]
    np.testing.assert_allclose(fe(np.concatenate([clip(fe, b) for b in bodies])),
                               np.concatenate([features(fe, b) for b in bodies]), rtol=1e-5, atol=1e-5)


def test_a_non_finite_row_fails_only_its_own_request():
    asyncio.run(_non_finite_row())


async def _non_finite_row():
    fe = AudioFrontend()

    def featurize(waves):
        out = fe(waves)
        out[np.abs(waves).max(axis=1) > 0.95] = np.nan  # stands in for a clip the front end cannot take
        return out

    calls = []
    b = DynamicBatcher(lambda x: (calls.append(len(x)), x.reshape(len(x), -1)[:, :3])[1], max_batch=8, max_queue=8,
                       max_queue_delay_s=0.05, queue_timeout_s=5, featurize=featurize)
    b.start()
    try:
        good, loud = clips(1, 1), np.ones((1, 16000), np.float32)
        feats = fe(clips(1, 2))
        results = await asyncio.gather(b.submit(good, raw=True), b.submit(loud, raw=True), b.submit(feats),
                                       return_exceptions=True)
    finally:
        await b.stop()
    assert calls == [3]  # one batch: two raw rows and one feature row
    np.testing.assert_allclose(results[0][0], fe(good).reshape(1, -1)[:, :3], atol=1e-6)
    assert isinstance(results[1], RejectedRow)
    np.testing.assert_array_equal(results[2][0], feats.reshape(1, -1)[:, :3])


@pytest.fixture(scope="module")
def runtime(served_run):
    return load_runtime(served_run / "student.onnx")


def test_served_classify_batches_the_log_mel_and_answers_as_one_clip_at_a_time(served_run, runtime):
    waves = clips(24, seed=3)
    xs = np.random.default_rng(4).standard_normal((8, *SHAPE)).astype(np.float32)
    with running_server(served_run, max_queue_delay_ms=40.0) as (url, app):
        batcher = app.state.fdkd.batcher
        fe, calls = batcher.featurize, []

        def counting(w):
            calls.append(len(w))
            return fe(w)

        batcher.featurize = counting
        wav_bodies = [write_wav(w, 16000) for w in waves]
        reference = [runtime(features(fe, body))[0] for body in wav_bodies]  # one clip at a time

        def classify(body):
            return httpx.post(f"{url}/v1/classify", content=body, headers={"content-type": "audio/wav"}, timeout=30)

        def infer(x):
            body = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                "data": x.ravel().tolist()}]}
            return httpx.post(f"{url}/v2/models/served/infer", json=body, timeout=30)

        before = httpx.get(f"{url}/metrics").text
        with ThreadPoolExecutor(32) as pool:
            wav_futures = [pool.submit(classify, b) for b in wav_bodies]
            v2_futures = [pool.submit(infer, x) for x in xs]
            answers = [f.result() for f in wav_futures]
            v2 = [f.result() for f in v2_futures]
        after = httpx.get(f"{url}/metrics").text
    for r, want in zip(answers, reference, strict=True):
        assert r.status_code == 200, r.text
        p = np.exp(want - want.max())
        p /= p.sum()
        got = np.array(list(r.json()["probabilities"].values()))
        assert r.json()["class_index"] == int(want.argmax())
        np.testing.assert_allclose(got, p, atol=1e-5)
    for r, x in zip(v2, xs, strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]), runtime(x[None])[0], atol=1e-5)
    assert sum(calls) == 24 and max(calls) > 1 and len(calls) < 24  # clips featurized a batch at a time
    assert metric(after, "fdkd_inferred_rows_total") - metric(before, "fdkd_inferred_rows_total") == 32
