"""Signed runs on a real tiny run: keys made by ``openssl genpkey -algorithm ed25519`` (as a user makes them),
``fdkd sign`` / ``fdkd verify --trust`` through the CLI, and real servers under ``--trust`` whose readiness says
why a run is refused (unsigned, another key, a forged artifact re-hashed into manifest and validation)."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
from typer.testing import CliRunner

from fdkd import artifacts
from fdkd.pipeline.cli import app
from fdkd.serving.model import NotServable, load_model
from fdkd.serving.signature import BadKey, UntrustedRun, sign_run, verify_run
from tests.serving_helpers import running_server, start_fdkd_serve

runner = CliRunner()


def _keypair(tmp_path, name: str):
    key, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
        subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    else:  # the same PKCS#8 / SubjectPublicKeyInfo PEM files
        from cryptography.hazmat.primitives import serialization as s
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        k = Ed25519PrivateKey.generate()
        key.write_bytes(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


@pytest.fixture
def keys(tmp_path):
    return _keypair(tmp_path, "ours"), _keypair(tmp_path, "theirs")


@pytest.fixture
def run_copy(served_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(served_run, dst)
    (dst / "signature.json").unlink(missing_ok=True)
    return dst


def _cli(*args):
    return runner.invoke(app, [*map(str, args)])


def _forge(run_dir):
    """Flip one byte of student.onnx and write its new sha256 into both manifest.json and validation.json: every
    hash the server checks then holds, only the signature can tell."""
    onnx = run_dir / "student.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    sha = artifacts.sha256_file(onnx)
    v = json.loads((run_dir / "validation.json").read_text())
    for a in v["artifacts"]:
        if a["name"] == "student.onnx":
            a["sha256"] = sha
    (run_dir / "validation.json").write_text(json.dumps(v))
    m = json.loads((run_dir / "manifest.json").read_text())
    m["artifacts"]["student.onnx"]["sha256"] = sha
    m["artifacts"]["validation.json"]["sha256"] = artifacts.sha256_file(run_dir / "validation.json")
    (run_dir / "manifest.json").write_text(json.dumps(m))


def test_sign_and_verify_cli(run_copy, keys):
    (key, pub), (_, other_pub) = keys
    result = _cli("verify", run_copy, "--trust", pub)
    assert result.exit_code == 1 and "is unsigned (no signature.json)" in " ".join(result.output.split())
    result = _cli("sign", run_copy, "--key", key)
    assert result.exit_code == 0, result.output
    doc = json.loads((run_copy / "signature.json").read_text())
    payload = doc["payload"]
    assert payload["run"] == "served" and doc["algorithm"] == "ed25519"
    assert payload["files"] == {n: artifacts.sha256_file(run_copy / n) for n in ("manifest.json", "validation.json")}
    assert _cli("verify", run_copy, "--trust", pub).exit_code == 0
    assert verify_run(run_copy, pub)["signed_at"] == payload["signed_at"]

    result = _cli("verify", run_copy, "--trust", other_pub)
    assert result.exit_code == 1 and "signed by another key" in " ".join(result.output.split())
    result = runner.invoke(app, ["verify", str(run_copy)], env={"FDKD_TRUST": str(other_pub)})
    assert result.exit_code == 1 and "signed by another key" in " ".join(result.output.split())

    # validation.json edited after signing (a gate flipped to passed, say)
    v = json.loads((run_copy / "validation.json").read_text())
    v["passed"] = True
    (run_copy / "validation.json").write_text(json.dumps(v, indent=1))
    result = _cli("verify", run_copy, "--trust", pub)
    assert result.exit_code == 1 and "validation.json changed after signing" in " ".join(result.output.split())
    # re-signing the changed run makes its signature hold again (the manifest's own hash of validation.json
    # still catches the edit: `fdkd verify` checks both)
    assert _cli("sign", run_copy, "--key", key).exit_code == 0
    verify_run(run_copy, pub)
    result = _cli("verify", run_copy, "--trust", pub)
    assert result.exit_code == 1 and "validation.json" in result.output and "not trusted" not in result.output

    # the signature file itself edited: the payload's hashes rewritten to match forged files
    doc = json.loads((run_copy / "signature.json").read_text())
    doc["payload"]["signed_at"] = "2020-01-01T00:00:00Z"
    (run_copy / "signature.json").write_text(json.dumps(doc))
    with pytest.raises(UntrustedRun, match="the signature does not verify"):
        verify_run(run_copy, pub)


def test_bad_keys_are_clear_errors_naming_the_file(run_copy, keys, tmp_path):
    (key, pub), _ = keys
    result = _cli("sign", run_copy, "--key", tmp_path / "missing.pem")
    assert result.exit_code == 2 and "missing.pem does not exist" in " ".join(result.output.split())
    result = _cli("sign", run_copy, "--key", pub)
    assert result.exit_code == 2 and "not an unencrypted PEM private key" in " ".join(result.output.split())
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(rsa)],
                   check=True, capture_output=True)
    result = _cli("sign", run_copy, "--key", rsa)
    assert result.exit_code == 2 and "not Ed25519" in " ".join(result.output.split())
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(BadKey, match="junk.pem is not a PEM file"):
        verify_run(run_copy, junk)
    with pytest.raises(BadKey, match="is a private key; pass its public key"):
        verify_run(run_copy, key)
    result = _cli("serve", run_copy, "--trust", tmp_path / "nope.pub.pem")
    assert result.exit_code == 2 and "nope.pub.pem does not exist" in " ".join(result.output.split())
    (run_copy / "signature.json").write_text("{not json")
    with pytest.raises(UntrustedRun, match="signature.json is not a valid fdkd signature"):
        verify_run(run_copy, pub)


def test_forged_run_is_refused_under_trust_and_served_without(run_copy, keys):
    (key, pub), _ = keys
    sign_run(run_copy, key)
    _forge(run_copy)
    assert load_model(run_copy).artifact == "student.onnx"  # without --trust every hash holds: served as today
    with pytest.raises(NotServable, match="not trusted: manifest.json changed after signing"):
        load_model(run_copy, trust=pub)
    with running_server(run_copy, wait_ready=False, trust=pub) as (url, _):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "not trusted: manifest.json changed after signing" in r.json()["error"]
        assert httpx.get(f"{url}/v1/model").status_code == 503
    assert _cli("verify", run_copy).exit_code == 0  # the forgery passes every hash check...
    result = _cli("verify", run_copy, "--trust", pub)  # ...but not the signature
    assert result.exit_code == 1 and "manifest.json changed after signing" in " ".join(result.output.split())


def test_signed_untouched_run_serves_and_other_key_or_unsigned_is_refused(run_copy, keys):
    (key, pub), (other_key, _) = keys
    with running_server(run_copy, wait_ready=False, trust=pub) as (url, _):
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "is unsigned (no signature.json)" in r.json()["error"]
    sign_run(run_copy, other_key)
    with running_server(run_copy, wait_ready=False, trust=pub) as (url, _):
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "signed by another key" in r.json()["error"]
    sign_run(run_copy, key)
    # the real `fdkd serve` process, the trusted key from FDKD_TRUST as the container passes it
    proc, url = start_fdkd_serve(run_copy, env={"FDKD_TRUST": str(pub)})
    try:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/v1/model").json()["artifact"] == "student.onnx"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_validate_sign_key_signs_as_it_finishes(run_copy, keys, tiny_root):
    """`fdkd validate --sign-key` on the real run (its config, here from the manifest) signs what it wrote."""
    (key, pub), _ = keys
    cfg = json.loads((run_copy / "manifest.json").read_text())["config"]
    overrides = [f"runs_dir={run_copy.parent}", f"name={run_copy.name}", f"data.cache_dir={cfg['data']['cache_dir']}"]
    from tests.conftest import SERVED_OVERRIDES, tiny_overrides

    sets = [s for o in tiny_overrides(tiny_root) + SERVED_OVERRIDES + overrides for s in ("--set", o)]
    result = _cli("validate", "--sign-key", key, *sets)
    assert result.exit_code == 0, result.output
    verify_run(run_copy, pub)
    result = _cli("validate", "--sign-key", run_copy / "nope.pem", *sets)
    assert result.exit_code == 2 and "nope.pem does not exist" in " ".join(result.output.split())
    # a validation that fails is not signed (and the old signature no longer matches what it wrote)
    strict = ["validate.gates.fp32_max_abs_logit=1e-30", "validate.gates.int8_min_agree_pct=100",
              "validate.gates.fp16_max_acc_drop_pt=0"]  # gates no tiny run passes all of
    result = _cli("validate", "--sign-key", key, *sets, *[x for g in strict for x in ("--set", g)])
    assert result.exit_code == 1 and "not signed: validation failed" in " ".join(result.output.split())
    with pytest.raises(UntrustedRun, match="changed after signing"):
        verify_run(run_copy, pub)


def test_files_swapped_after_the_signature_check_are_refused(run_copy, keys, monkeypatch):
    """The loader parses manifest.json and validation.json only if their bytes are the signed ones (no swap
    between the signature check and the read): simulated by a check that saw other bytes."""
    import fdkd.serving.signature as signature

    (key, pub), _ = keys
    sign_run(run_copy, key)
    real = signature.verify_run

    def saw_other_bytes(run_dir, trust):
        payload = real(run_dir, trust)
        return payload | {"files": {**payload["files"], "validation.json": "0" * 64}}

    monkeypatch.setattr(signature, "verify_run", saw_other_bytes)
    with pytest.raises(NotServable, match="not trusted: validation.json changed after its signature was checked"):
        load_model(run_copy, trust=pub)
