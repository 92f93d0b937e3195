"""Who made a store path: Nix's path fingerprint and Ed25519 signatures over it, checked by pgod.

Nix 2.8 accepts content-addressed paths (what `nix-store --add` makes, so every fleet report)
without checking any signature, even with `require-sigs`, so a host's report is trusted only
after pgod checks it itself (docs/design/fleet.md §3), with Nix's own format:

- the fingerprint a signature covers, `ValidPathInfo::fingerprint` (src/libstore/path-info.cc):
  ``1;<store path>;sha256:<nix32 narHash>;<narSize>;<sorted full paths of references, by ",">``
  (the last ``;`` stays for a path without references);
- keys as Nix writes them, ``name:base64``: a public key is 32 raw bytes, a secret key 64 (the
  Ed25519 seed, then the public key); a signature is ``name:base64(64 bytes)``;
- a path's narHash, narSize, references and signatures read from `nix path-info --json`
  (Nix 2.8's shape: a list of objects, SRI hashes, ``"valid": false`` for a path not in the store).

Ed25519 without a Python dependency: `openssl pkeyutl -rawin` (OpenSSL ≥ 3.0), the key as DER
(a fixed header before the raw bytes), the data, key and signature as memfds it opens through
/proc/self/fd/N (`-rawin` needs a file it can stat: from a pipe it fails "unable to determine
file size for oneshot operation"). Ed25519 is deterministic: pgod's signature over a fingerprint
is byte for byte the one `nix store sign` adds. Every tool run is bounded in time and output.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pgod.confine import memfd_holding

# --- Nix base32 ------------------------------------------------------------------------------

#: Nix's base32 alphabet (no e, o, u, t), src/libutil/hash.cc.
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_DIGIT = {c: i for i, c in enumerate(NIX32_ALPHABET)}
SHA256_BYTES = 32


class ProvenanceError(ValueError):
    """A hash, key, signature or path-info that is not in Nix's format, or a tool that failed."""


def nix32_length(size: int) -> int:
    """Characters of ``size`` bytes in Nix base32 (52 for SHA-256)."""
    return (size * 8 - 1) // 5 + 1 if size else 0


def nix32_encode(data: bytes) -> str:
    """Nix's base32: 5-bit groups read from the end of the bytes (not RFC 4648)."""
    chars = []
    for n in range(nix32_length(len(data)) - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        chars.append(NIX32_ALPHABET[c & 0x1F])
    return "".join(chars)


def nix32_decode(text: str, size: int = SHA256_BYTES) -> bytes:
    """The ``size`` bytes ``text`` (Nix base32) stands for; refuses other lengths, other
    characters and bits past the last byte (as Nix's parser does)."""
    if len(text) != nix32_length(size):
        raise ProvenanceError(f"a {size}-byte hash is {nix32_length(size)} base32 characters, not {len(text)}")
    out = bytearray(size)
    for n in range(len(text)):
        digit = _NIX32_DIGIT.get(text[len(text) - n - 1])
        if digit is None:
            raise ProvenanceError(f"{text[len(text) - n - 1]!r} is not a Nix base32 character")
        b = n * 5
        i, j = divmod(b, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise ProvenanceError("Nix base32 hash has bits past its last byte")
    return bytes(out)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProvenanceError(f"{what} is not base64") from None


def sri_to_nix32(sri: str) -> str:
    """``sha256-<base64>`` (what `nix path-info --json` prints) → ``sha256:<nix32>`` (what the
    fingerprint and `nix-store -q --hash` use)."""
    algo, sep, b64 = sri.partition("-")
    if algo != "sha256" or not sep:
        raise ProvenanceError(f"not a SHA-256 SRI hash: {sri[:80]!r}")
    digest = _b64decode(b64, "the SRI hash")
    if len(digest) != SHA256_BYTES:
        raise ProvenanceError(f"a SHA-256 hash is 32 bytes, not {len(digest)}")
    return "sha256:" + nix32_encode(digest)


def nix32_to_sri(text: str) -> str:
    """``sha256:<nix32>`` → ``sha256-<base64>``."""
    algo, sep, rest = text.partition(":")
    if algo != "sha256" or not sep:
        raise ProvenanceError(f"not a sha256:<nix32> hash: {text[:80]!r}")
    return "sha256-" + base64.b64encode(nix32_decode(rest)).decode("ascii")


# --- the fingerprint -------------------------------------------------------------------------


@dataclass(frozen=True)
class PathInfo:
    """What a signature covers (and the signatures): one valid path of `nix path-info --json`."""

    path: str
    nar_hash: str  # sha256:<nix32>
    nar_size: int
    references: tuple[str, ...]  # full store paths, as Nix listed them
    signatures: tuple[str, ...]  # "name:base64"
    ca: str | None = None


def fingerprint(info: PathInfo) -> str:
    """Nix's `ValidPathInfo::fingerprint`: the bytes a path's signature is over."""
    if info.nar_size <= 0:  # Nix refuses too: "its size is not known"
        raise ProvenanceError(f"cannot fingerprint {info.path}: its NAR size is not known")
    if not info.nar_hash.startswith("sha256:"):
        raise ProvenanceError(f"cannot fingerprint {info.path}: narHash {info.nar_hash[:80]!r} is not sha256:<nix32>")
    nix32_decode(info.nar_hash.removeprefix("sha256:"))  # well formed
    return f"1;{info.path};{info.nar_hash};{info.nar_size};{','.join(sorted(set(info.references)))}"


# --- reading path-info from Nix --------------------------------------------------------------

TIMEOUT_SECONDS = 60.0
OUTPUT_BYTES = 16 << 20  # path-info of a batch: ~700 bytes a path
STDERR_BYTES = 64 << 10
MAX_SIGNATURES = 64  # per path: more is not a path pgod or Nix signed
_STORE_PATH = re.compile(r"/[^\0\n;,]*/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}")


class ToolError(ProvenanceError):
    """nix or openssl could not run, failed, ran too long or printed too much."""


def _environment(nix: bool) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    if nix:  # Nix's own settings (NIX_CONFIG, NIX_REMOTE, …) and its caches' home
        env.update({k: v for k, v in os.environ.items()
                    if k.startswith("NIX_") or k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")})
    return env


def run_bounded(argv: Sequence[str], pass_fds: Sequence[int] = (), timeout: float = TIMEOUT_SECONDS,
                max_bytes: int = OUTPUT_BYTES, nix: bool = False, check: bool = True) -> tuple[int, bytes, str]:
    """(exit status, stdout, stderr's tail) of ``argv``, read while it runs. A run past
    ``timeout`` or printing more than ``max_bytes`` is killed with its process group and raises
    ToolError, as does (with ``check``) an exit other than 0."""
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds), process_group=0, close_fds=True, env=_environment(nix),
        )
    except OSError as err:
        raise ToolError(f"cannot run {argv[0]}: {err.strerror or err}") from None
    out, err = bytearray(), bytearray()
    problem = None
    deadline = time.monotonic() + timeout
    name = " ".join(argv[:2])
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, out)
        selector.register(process.stderr, selectors.EVENT_READ, err)
        while selector.get_map() and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"{name} ran past {timeout:.0f} s and was killed"
                break
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err and len(err) > STDERR_BYTES:
                    del err[: len(err) - STDERR_BYTES]
                if len(out) > max_bytes:
                    problem = f"{name} printed more than {max_bytes} bytes and was killed"
    if problem is not None:
        try:  # not yet reaped: its pid still holds the group's id
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.stdout.close()
    process.stderr.close()
    returncode = process.wait()
    if problem is not None:
        raise ToolError(problem)
    tail = err.decode("utf-8", "replace").strip()[-500:]
    if check and returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        raise ToolError(f"{name} {how}: {tail}")
    return returncode, bytes(out), tail


def _path_info(entry: object) -> PathInfo | None:
    """One element of `nix path-info --json` (2.8), checked; None for a path not in the store."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise ProvenanceError("nix path-info --json: an entry without a path")
    path = entry["path"]
    if entry.get("valid") is False:
        return None
    nar_hash, nar_size = entry.get("narHash"), entry.get("narSize")
    references, signatures = entry.get("references", []), entry.get("signatures", [])
    ca = entry.get("ca")
    if not isinstance(nar_hash, str):
        raise ProvenanceError(f"{path}: no narHash")
    if isinstance(nar_size, bool) or not isinstance(nar_size, int) or nar_size <= 0:
        raise ProvenanceError(f"{path}: narSize {nar_size!r} is not a positive integer")
    if not isinstance(references, list) or not all(isinstance(r, str) and _STORE_PATH.fullmatch(r)
                                                   for r in references):
        raise ProvenanceError(f"{path}: references are not a list of store paths")
    if not isinstance(signatures, list) or not all(isinstance(s, str) for s in signatures):
        raise ProvenanceError(f"{path}: signatures are not a list of strings")
    if len(signatures) > MAX_SIGNATURES:
        raise ProvenanceError(f"{path}: {len(signatures)} signatures (at most {MAX_SIGNATURES})")
    if ca is not None and not isinstance(ca, str):
        raise ProvenanceError(f"{path}: ca is not a string")
    # Nix 2.8 prints SRI; a sha256:<nix32> (other versions, narinfo) is taken as it is.
    nar_hash = sri_to_nix32(nar_hash) if nar_hash.startswith("sha256-") else nar_hash
    if not nar_hash.startswith("sha256:"):
        raise ProvenanceError(f"{path}: narHash {nar_hash[:80]!r} is not SHA-256")
    nix32_decode(nar_hash.removeprefix("sha256:"))
    return PathInfo(path, nar_hash, nar_size, tuple(references), tuple(signatures), ca)


def path_infos(paths: Iterable[str], store_uri: str | None = None, nix: str = "nix",
               timeout: float = TIMEOUT_SECONDS) -> dict[str, PathInfo]:
    """The valid ones of ``paths`` in the store at ``store_uri`` (Nix's default store when None),
    by path; a path the store lacks is left out. Substituters are not asked (`substituters =`):
    this reads what the store holds, it never fetches."""
    paths = list(paths)
    for path in paths:
        if not _STORE_PATH.fullmatch(path):
            raise ProvenanceError(f"not a store path: {path[:200]!r}")
    if not paths:
        return {}
    argv = [nix, "path-info", "--json", "--extra-experimental-features", "nix-command",
            "--option", "substituters", ""]
    if store_uri is not None:
        argv += ["--store", store_uri]
    _rc, out, _err = run_bounded([*argv, "--", *paths], timeout=timeout,
                                 max_bytes=OUTPUT_BYTES, nix=True)
    try:
        entries = json.loads(out)
    except (ValueError, UnicodeDecodeError):
        raise ProvenanceError("nix path-info --json printed no JSON") from None
    if not isinstance(entries, list):
        raise ProvenanceError("nix path-info --json printed no list")
    wanted = set(paths)
    found = {}
    for entry in entries:
        info = _path_info(entry)
        if info is not None and info.path in wanted:
            found[info.path] = info
    return found


def path_info(path: str, store_uri: str | None = None, nix: str = "nix", timeout: float = TIMEOUT_SECONDS) -> PathInfo:
    """One path's info; ProvenanceError when the store does not hold it."""
    info = path_infos([path], store_uri, nix, timeout).get(path)
    if info is None:
        raise ProvenanceError(f"{path} is not valid in {store_uri or 'the default store'}")
    return info


# --- keys ------------------------------------------------------------------------------------

PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64
SIGNATURE_BYTES = 64
# DER headers that make raw Ed25519 bytes a key openssl reads (RFC 8410): SubjectPublicKeyInfo
# and PKCS#8 PrivateKeyInfo (the 32-byte seed).
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_KEY_NAME = re.compile(r"[^\s:]{1,128}")


@dataclass(frozen=True)
class PublicKey:
    name: str
    key: bytes  # 32

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode('ascii')}"


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: bytes  # 64: seed ‖ public

    def __repr__(self) -> str:  # never print the secret
        return f"SecretKey({self.name!r})"

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.name, self.key[32:])


def _split_named(text: str, what: str) -> tuple[str, bytes]:
    name, sep, b64 = text.strip().partition(":")
    if not sep or not _KEY_NAME.fullmatch(name):
        raise ProvenanceError(f"{what} is not name:base64")
    return name, _b64decode(b64, what)


def parse_public_key(text: str) -> PublicKey:
    """A Nix public key, ``name:base64(32 bytes)`` (`nix key convert-secret-to-public`)."""
    name, raw = _split_named(text, "public key")
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ProvenanceError(f"public key {name!r} has {len(raw)} bytes, not {PUBLIC_KEY_BYTES}")
    return PublicKey(name, raw)


def parse_secret_key(text: str) -> SecretKey:
    """A Nix secret key, ``name:base64(64 bytes)`` (`nix key generate-secret`)."""
    name, raw = _split_named(text, "secret key")
    if len(raw) != SECRET_KEY_BYTES:
        raise ProvenanceError(f"secret key {name!r} has {len(raw)} bytes, not {SECRET_KEY_BYTES}")
    return SecretKey(name, raw)


def parse_signature(text: str) -> tuple[str, bytes]:
    """A Nix signature ``name:base64(64 bytes)`` → (key name, raw signature)."""
    name, raw = _split_named(text, "signature")
    if len(raw) != SIGNATURE_BYTES:
        raise ProvenanceError(f"signature by {name!r} has {len(raw)} bytes, not {SIGNATURE_BYTES}")
    return name, raw


# --- Ed25519 through openssl -----------------------------------------------------------------

OPENSSL_TIMEOUT_SECONDS = 30.0
_VERIFIED = b"Signature Verified Successfully"
_FAILED = b"Signature Verification Failure"


def _with_memfds(blobs: Sequence[bytes]) -> list[int]:
    fds = []
    try:
        for blob in blobs:
            fds.append(memfd_holding("pgod-fleet", blob))
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def verify(public: PublicKey, data: bytes, signature: bytes, openssl: str = "openssl") -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``data``; ToolError when
    openssl could not answer (missing, too old for -rawin, a key it cannot read)."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    fds = _with_memfds([_SPKI_PREFIX + public.key, data, signature])
    try:
        key, message, sig = (f"/proc/self/fd/{fd}" for fd in fds)
        rc, out, err = run_bounded(
            [openssl, "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", key, "-rawin",
             "-in", message, "-sigfile", sig],
            pass_fds=fds, timeout=OPENSSL_TIMEOUT_SECONDS, max_bytes=4096, check=False)
    finally:
        for fd in fds:
            os.close(fd)
    if rc == 0 and _VERIFIED in out:
        return True
    if rc == 1 and _FAILED in out:
        return False
    raise ToolError(f"openssl pkeyutl -verify could not check the signature (exit {rc}): {err}")


def sign(secret: SecretKey, data: bytes, openssl: str = "openssl") -> str:
    """``data`` signed with a Nix secret key, as Nix writes a signature (``name:base64``)."""
    fds = _with_memfds([_PKCS8_PREFIX + secret.key[:32], data])
    try:
        key, message = (f"/proc/self/fd/{fd}" for fd in fds)
        _rc, out, _err = run_bounded(
            [openssl, "pkeyutl", "-sign", "-keyform", "DER", "-inkey", key, "-rawin", "-in", message],
            pass_fds=fds, timeout=OPENSSL_TIMEOUT_SECONDS, max_bytes=4096)
    finally:
        for fd in fds:
            os.close(fd)
    if len(out) != SIGNATURE_BYTES:
        raise ToolError(f"openssl pkeyutl -sign printed {len(out)} bytes, not a {SIGNATURE_BYTES}-byte signature")
    return f"{secret.name}:{base64.b64encode(out).decode('ascii')}"


def sign_path(secret: SecretKey, info: PathInfo, openssl: str = "openssl") -> str:
    """The signature `nix store sign` would add to the path (Ed25519 is deterministic)."""
    return sign(secret, fingerprint(info).encode(), openssl)


# --- the verdict -----------------------------------------------------------------------------

ACCEPTED = "accepted"
NO_SIGNATURE = "no-signature"  # the path carries no signature at all
UNKNOWN_KEY = "unknown-key"  # none by a trusted key (nor by the expected one)
BAD_SIGNATURE = "bad-signature"  # by a trusted key, but not over this path's fingerprint
WRONG_HOST = "wrong-host"  # a good signature, but by another trusted key than the expected one


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # ACCEPTED or a refusal's name
    key_name: str | None = None  # whose signature was accepted (or, for wrong-host, found)
    detail: str = ""


def check_signed(info: PathInfo, trusted: Mapping[str, PublicKey | str], expected: str | None = None,
                 openssl: str = "openssl") -> Verdict:
    """Whether ``info`` carries a good signature by a key of ``trusted`` (key name → key), and,
    given ``expected``, by that key. In order: a good signature by the expected key (any trusted
    key without one) is accepted; a bad one by the expected key is `bad-signature` (a forgery is
    named as such, even next to another host's good signature); a good one only by other trusted
    keys is `wrong-host`; bad ones only, `bad-signature`; none by a trusted key, `unknown-key`;
    none at all, `no-signature`. Signatures not in Nix's format are skipped."""
    if not info.signatures:
        return Verdict(False, NO_SIGNATURE, detail=f"{info.path} carries no signature")
    keys = {name: parse_public_key(key) if isinstance(key, str) else key for name, key in trusted.items()}
    for name, key in keys.items():
        if key.name != name:
            raise ProvenanceError(f"trusted key {name!r} is named {key.name!r}")
    if expected is not None and expected not in keys:
        return Verdict(False, UNKNOWN_KEY, detail=f"the expected key {expected!r} is not trusted")
    data = fingerprint(info).encode()
    good, bad, unknown = [], [], []
    for text in info.signatures:
        try:
            name, raw = parse_signature(text)
        except ProvenanceError:
            unknown.append(text.partition(":")[0][:64])
            continue
        if name not in keys:
            unknown.append(name)
        elif verify(keys[name], data, raw, openssl):
            good.append(name)
        else:
            bad.append(name)
    if expected is not None:
        if expected in good:
            return Verdict(True, ACCEPTED, expected)
        if expected in bad:
            return Verdict(False, BAD_SIGNATURE, expected, f"{expected}'s signature does not match {info.path}")
        if good:
            return Verdict(False, WRONG_HOST, good[0], f"signed by {', '.join(sorted(set(good)))}, not {expected}")
    elif good:
        return Verdict(True, ACCEPTED, good[0])
    if bad:
        names = ", ".join(sorted(set(bad)))
        return Verdict(False, BAD_SIGNATURE, bad[0], f"{names}'s signature does not match {info.path}")
    return Verdict(False, UNKNOWN_KEY, detail=f"signed only by keys not trusted: {', '.join(sorted(set(unknown)))}")
