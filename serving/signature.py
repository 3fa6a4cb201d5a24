"""Signed runs: an Ed25519 signature over a run's ``manifest.json`` and ``validation.json`` together.

``sign_run(RUN_DIR, KEY.pem)`` (``fdkd sign``, ``fdkd validate --sign-key``) writes
``RUN_DIR/signature.json``::

    {"payload": {"format": "fdkd-run-signature/1", "run": <manifest name>, "signed_at": <UTC ISO time>,
                 "files": {"manifest.json": <sha256>, "validation.json": <sha256>},
                 "public_key_fingerprint": "sha256:<hex>"},
     "algorithm": "ed25519", "signature": <base64 of the signature over the payload's canonical JSON>,
     "public_key_fingerprint": "sha256:<hex>"}

The canonical JSON is ``json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8. The fingerprint is the sha256 of the raw 32-byte public key. The manifest holds the sha256
of every artifact, so the signature covers the artifacts too, through the hash chain the server
already checks (``fdkd.serving.model``).

``verify_run(RUN_DIR, PUB.pem)`` (``fdkd serve --trust``, ``fdkd verify --trust``) raises
``UntrustedRun`` when the run is unsigned, signed by another key, its signature does not verify
(``signature.json`` edited), or ``manifest.json`` / ``validation.json`` changed after signing.
Keys are PEM files as ``openssl genpkey -algorithm ed25519`` (private) and
``openssl pkey -in KEY.pem -pubout`` (public) write them. Light imports only (``cryptography``; no
torch, no ``pipeline``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

SIGNATURE = "signature.json"
SIGNED_FILES = ("manifest.json", "validation.json")
FORMAT = "fdkd-run-signature/1"


class UntrustedRun(RuntimeError):
    """The run's signature is missing, from another key, invalid, or older than its files; the message says why."""


class BadKey(ValueError):
    """A key file that cannot be used; the message names the file."""


def file_sha256(path: Path) -> str:
    """A file's sha256, read 1 MiB at a time (the one hash every serving module uses)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def canonical(payload: dict) -> bytes:
    """The bytes the signature is over."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _pem(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise BadKey(f"{what} {path} does not exist")
    data = path.read_bytes()
    if b"-----BEGIN" not in data:
        raise BadKey(f"{what} {path} is not a PEM file (expected `-----BEGIN ...-----`, as "
                        "`openssl genpkey -algorithm ed25519` writes)")
    return data


def load_private_key(path: Path):
    """The Ed25519 private key in PEM file ``path``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _pem(path, "signing key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise BadKey(f"signing key {path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"signing key {path} is a {type(key).__name__}, not Ed25519 "
                        "(make one with `openssl genpkey -algorithm ed25519 -out KEY.pem`)")
    return key


def load_public_key(path: Path):
    """The Ed25519 public key in PEM file ``path`` (a private key file is refused: trust needs no secret)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _pem(path, "trusted key")
    if b"PRIVATE KEY" in data:
        raise BadKey(f"trusted key {path} is a private key; pass its public key "
                        f"(`openssl pkey -in {Path(path).name} -pubout -out PUB.pem`)")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise BadKey(f"trusted key {path} is not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadKey(f"trusted key {path} is a {type(key).__name__}, not Ed25519")
    return key


def fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return "sha256:" + hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def _signed_hashes(run_dir: Path) -> dict[str, str]:
    hashes = {}
    for name in SIGNED_FILES:
        p = run_dir / name
        if not p.is_file():
            raise UntrustedRun(f"{run_dir} has no {name}: not a finished fdkd run")
        hashes[name] = file_sha256(p)
    return hashes


def _run_name(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UntrustedRun(f"{run_dir / 'manifest.json'} is not valid JSON: {e}") from None


def sign_run(run_dir: Path, key_path: Path, now: datetime | None = None) -> dict:
    """Sign ``run_dir``'s manifest and validation.json with the private key in ``key_path``; writes and returns
    ``signature.json``'s content. Raises ``BadKey`` for an unusable key, ``UntrustedRun`` for a run
    directory without the files."""
    run_dir = Path(run_dir)
    key = load_private_key(key_path)
    hashes = _signed_hashes(run_dir)
    fp = fingerprint(key.public_key())
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = {"format": FORMAT, "run": _run_name(run_dir), "signed_at": when, "files": hashes,
               "public_key_fingerprint": fp}
    doc = {"payload": payload, "algorithm": "ed25519",
           "signature": base64.b64encode(key.sign(canonical(payload))).decode(), "public_key_fingerprint": fp}
    tmp = run_dir / (SIGNATURE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(run_dir / SIGNATURE)
    return doc


def verify_run(run_dir: Path, trust_path: Path) -> dict:
    """Check ``run_dir``'s signature against the trusted public key in ``trust_path``; returns the signed payload.
    Raises ``UntrustedRun`` (the reason) or ``BadKey`` (an unusable trusted key)."""
    from cryptography.exceptions import InvalidSignature

    run_dir = Path(run_dir)
    trusted = load_public_key(trust_path)
    trusted_fp = fingerprint(trusted)
    path = run_dir / SIGNATURE
    if not path.is_file():
        raise UntrustedRun(f"run {run_dir} is unsigned (no {SIGNATURE}); sign it with `fdkd sign {run_dir} --key KEY`")
    try:
        doc = json.loads(path.read_text())
        payload, sig_b64 = doc["payload"], doc["signature"]
        signed_fp = payload["public_key_fingerprint"]
        files = payload["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UntrustedRun(f"{path} is not a valid fdkd signature ({type(e).__name__}: {e})") from None
    if payload.get("format") != FORMAT:
        raise UntrustedRun(f"{path}: format {payload.get('format')!r}, expected {FORMAT!r}")
    if signed_fp != trusted_fp:
        raise UntrustedRun(f"run {run_dir} is signed by another key (fingerprint {signed_fp}); the trusted key "
                           f"{trust_path} is {trusted_fp}")
    try:
        trusted.verify(base64.b64decode(sig_b64, validate=True), canonical(payload))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise UntrustedRun(f"{path}: the signature does not verify with the trusted key {trust_path} "
                           "(signature.json was altered)") from None
    if set(files) != set(SIGNED_FILES):
        raise UntrustedRun(f"{path} signs {sorted(files)}, expected {list(SIGNED_FILES)}")
    now = _signed_hashes(run_dir)
    for name in SIGNED_FILES:
        if now[name] != files[name]:
            raise UntrustedRun(f"{name} changed after signing (signed sha256 {files[name][:12]}, file "
                               f"{now[name][:12]}); re-validate and re-sign the run")
    if payload.get("run") != _run_name(run_dir):
        raise UntrustedRun(f"{path} signs run {payload.get('run')!r}, the manifest names {_run_name(run_dir)!r}")
    return payload
