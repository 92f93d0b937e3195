"""Provenance of store paths (pgod/fleet/provenance.py) against the real Nix 2.8 and OpenSSL 3.

Keys from `nix key generate-secret`, paths added with `nix-store --add` into a throwaway chroot
store (`--store` under pytest's tmp dir), signatures added by `nix store sign`: pgod reads them
through `nix path-info --json`, checks them with `openssl pkeyutl -verify -rawin`, and its own
signature over Nix's fingerprint is byte for byte the one Nix made.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import subprocess

import pytest

from pgod.fleet import provenance as pv

NIX_TOOLS = ("nix", "nix-store")


def _require_tools() -> None:
    for tool in NIX_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: install Debian's nix-bin (Nix 2.8)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing: install Debian's openssl (OpenSSL ≥ 3.0)")


def nix(*args: str, input: str | None = None) -> str:
    env = {**os.environ, "NIX_CONFIG": os.environ.get("NIX_CONFIG", "") + "\nbuild-users-group =\nsubstituters ="}
    result = subprocess.run([*args], capture_output=True, text=True, input=input, env=env, timeout=60)
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result.stdout.strip()


EXP = ("--extra-experimental-features", "nix-command")


@dataclasses.dataclass
class Fleet:
    store: str
    secrets: dict[str, str]  # key name → the secret key's text
    publics: dict[str, str]  # key name → `nix key convert-secret-to-public`
    key_files: dict[str, str]
    signed: str  # a path signed by hostA-1
    signed_by_b: str  # a path signed by hostB-1
    unsigned: str
    with_refs: str  # a path with two references (toFile), signed by hostA-1
    files: dict[str, bytes]  # store path → the bytes added

    def sign(self, key: str, path: str) -> None:
        nix("nix", *EXP, "store", "sign", "--store", self.store, "--key-file", self.key_files[key], path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    _require_tools()
    root = tmp_path_factory.mktemp("fleet-prov")
    store = str(root / "store")
    secrets, publics, key_files = {}, {}, {}
    for name in ("hostA-1", "hostB-1"):
        secrets[name] = nix("nix", *EXP, "key", "generate-secret", "--key-name", name)
        publics[name] = nix("nix", *EXP, "key", "convert-secret-to-public", input=secrets[name])
        key_files[name] = str(root / f"{name}.sec")
        (root / f"{name}.sec").write_text(secrets[name])
    files = {}
    paths = []
    for label, data in (("prof.profdata", b"\x81profdata" + bytes(range(256)) * 3),
                        ("other.profdata", b"another host's profile\n"), ("plain", b"unsigned\n")):
        (root / label).write_bytes(data)
        path = nix("nix-store", "--store", store, "--add", str(root / label))
        files[path] = data
        paths.append(path)
    (root / "za").write_text("a\n")
    (root / "ab").write_text("b\n")
    with_refs = nix("nix", *EXP, "eval", "--impure", "--store", store, "--raw", "--expr",
                    f'builtins.toFile "r" "${{{root}/za}} ${{{root}/ab}}"')
    fleet = Fleet(store, secrets, publics, key_files, paths[0], paths[1], paths[2], with_refs, files)
    fleet.sign("hostA-1", paths[0])
    fleet.sign("hostB-1", paths[1])
    fleet.sign("hostA-1", with_refs)
    return fleet


# --- Nix base32 ------------------------------------------------------------------------------

DOC_SRI = "sha256-khbIv6ig9mB5fZmr6oFiCQm279CzoT692F5fEcZrgiM="
DOC_NIX32 = "sha256:08w2dg312psyv2ykx8dks3pvc289ca0ymawrgmwn1xm0m2zwh5lj"


def test_base32_vector_of_the_design():
    assert pv.sri_to_nix32(DOC_SRI) == DOC_NIX32
    assert pv.nix32_to_sri(DOC_NIX32) == DOC_SRI
    assert pv.nix32_length(32) == 52 and pv.nix32_length(20) == 32


def test_base32_round_trips_and_refuses_malformed():
    for size in (1, 5, 20, 32, 64):
        data = hashlib.sha512(bytes([size])).digest()[:size]
        assert pv.nix32_decode(pv.nix32_encode(data), size) == data
    good = DOC_NIX32.removeprefix("sha256:")
    for bad in (good[:-1], good + "0", "e" + good[1:], "u" + good[1:]):
        with pytest.raises(pv.ProvenanceError):
            pv.nix32_decode(bad)
    with pytest.raises(pv.ProvenanceError, match="past its last byte"):
        pv.nix32_decode("z" + good[1:])  # the first character carries only 1 bit of a 32-byte hash
    for bad in ("sha512-" + DOC_SRI[7:], "sha256-!!", "sha256-" + base64.b64encode(b"short").decode()):
        with pytest.raises(pv.ProvenanceError):
            pv.sri_to_nix32(bad)


def test_base32_equals_nix(fleet):
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(8)]
    sris = ["sha256-" + base64.b64encode(d).decode() for d in digests]
    printed = nix("nix", *EXP, "hash", "to-base32", *sris).split()
    assert printed == [pv.nix32_encode(d) for d in digests]
    assert [pv.nix32_decode(p) for p in printed] == digests
    for path in (fleet.signed, fleet.with_refs):
        info = pv.path_info(path, fleet.store)
        assert info.nar_hash == nix("nix-store", "--store", fleet.store, "-q", "--hash", path)


# --- path-info and the fingerprint -----------------------------------------------------------


def test_path_info_read_from_nix(fleet):
    infos = pv.path_infos([fleet.signed, fleet.unsigned, fleet.with_refs,
                           "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-absent"], fleet.store)
    assert set(infos) == {fleet.signed, fleet.unsigned, fleet.with_refs}  # the absent one left out
    info = infos[fleet.signed]
    assert info.nar_size == int(nix("nix-store", "--store", fleet.store, "-q", "--size", fleet.signed))
    assert info.references == () and info.ca.startswith("fixed:r:sha256:")
    assert [s.partition(":")[0] for s in info.signatures] == ["hostA-1"]
    assert infos[fleet.unsigned].signatures == ()
    refs = nix("nix-store", "--store", fleet.store, "-q", "--references", fleet.with_refs).split()
    assert sorted(infos[fleet.with_refs].references) == sorted(refs) and len(refs) == 2
    assert pv.fingerprint(info) == f"1;{fleet.signed};{info.nar_hash};{info.nar_size};"
    with pytest.raises(pv.ProvenanceError, match="not valid"):
        pv.path_info("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-absent", fleet.store)
    with pytest.raises(pv.ProvenanceError, match="not a store path"):
        pv.path_infos(["/nix/store/x;1"], fleet.store)


def test_references_sorted_by_full_path_as_nix_signs(fleet):
    info = pv.path_info(fleet.with_refs, fleet.store)
    by_path = sorted(info.references)
    by_name = sorted(info.references, key=lambda p: p.rpartition("-")[2])
    assert by_path != by_name  # the fixture's two references tell the orders apart
    assert pv.fingerprint(info).endswith(";" + ",".join(by_path))
    trusted = {"hostA-1": fleet.publics["hostA-1"]}
    assert pv.check_signed(info, trusted) == pv.Verdict(True, pv.ACCEPTED, "hostA-1")
    wrong_order = pv.fingerprint(info).rpartition(";")[0] + ";" + ",".join(by_name)
    _name, raw = pv.parse_signature(info.signatures[0])
    assert not pv.verify(pv.parse_public_key(fleet.publics["hostA-1"]), wrong_order.encode(), raw)


# --- keys and signatures ---------------------------------------------------------------------


def test_keys_parse_as_nix_writes_them(fleet):
    secret = pv.parse_secret_key(fleet.secrets["hostA-1"])
    assert str(secret.public) == fleet.publics["hostA-1"]
    assert pv.parse_public_key(fleet.publics["hostA-1"]) == secret.public
    assert "hostA-1" in repr(secret) and fleet.secrets["hostA-1"].partition(":")[2][:8] not in repr(secret)
    for bad in ("nokey", ":" + base64.b64encode(bytes(32)).decode(), "k:" + base64.b64encode(bytes(31)).decode(),
                "k:not base64!"):
        with pytest.raises(pv.ProvenanceError):
            pv.parse_public_key(bad)
    with pytest.raises(pv.ProvenanceError):
        pv.parse_secret_key(fleet.publics["hostA-1"])  # 32 bytes is a public key


def test_pgod_signature_equals_nix(fleet, tmp_path):
    secret = pv.parse_secret_key(fleet.secrets["hostA-1"])
    for path in (fleet.signed, fleet.with_refs):
        info = pv.path_info(path, fleet.store)
        assert pv.sign_path(secret, info) == info.signatures[0]
    # signed by pgod first, then by Nix: the path carries one signature, pgod's bytes
    (tmp_path / "fresh").write_bytes(b"signed by pgod before Nix\n")
    fresh = nix("nix-store", "--store", fleet.store, "--add", str(tmp_path / "fresh"))
    info = pv.path_info(fresh, fleet.store)
    assert info.signatures == ()
    ours = pv.sign_path(secret, info)
    fleet.sign("hostA-1", fresh)
    assert pv.path_info(fresh, fleet.store).signatures == (ours,)
    assert pv.check_signed(dataclasses.replace(info, signatures=(ours,)), dict(fleet.publics)).accepted


# --- the verdict -----------------------------------------------------------------------------


def test_signed_path_accepted(fleet):
    info = pv.path_info(fleet.signed, fleet.store)
    trusted = {name: pv.parse_public_key(key) for name, key in fleet.publics.items()}
    assert pv.check_signed(info, trusted) == pv.Verdict(True, pv.ACCEPTED, "hostA-1")
    assert pv.check_signed(info, trusted, expected="hostA-1").accepted
    assert pv.check_signed(info, {"hostA-1": fleet.publics["hostA-1"]}).accepted  # text keys too


def test_changed_bytes_refused_as_bad_signature(fleet):
    info = pv.path_info(fleet.signed, fleet.store)
    trusted = {"hostA-1": fleet.publics["hostA-1"]}
    other = hashlib.sha256(fleet.files[fleet.signed] + b"x").digest()
    changed = [
        dataclasses.replace(info, nar_hash="sha256:" + pv.nix32_encode(other)),
        dataclasses.replace(info, nar_size=info.nar_size + 1),
        dataclasses.replace(info, references=(fleet.unsigned,)),
        dataclasses.replace(info, path=fleet.unsigned),
    ]
    name, raw = pv.parse_signature(info.signatures[0])
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    changed.append(dataclasses.replace(info, signatures=(f"{name}:{base64.b64encode(flipped).decode()}",)))
    for each in changed:
        verdict = pv.check_signed(each, trusted)
        assert (verdict.accepted, verdict.reason, verdict.key_name) == (False, pv.BAD_SIGNATURE, "hostA-1"), each


def test_another_key_of_the_same_name_refused(fleet, tmp_path):
    impostor = nix("nix", *EXP, "key", "generate-secret", "--key-name", "hostA-1")
    info = pv.path_info(fleet.signed, fleet.store)
    forged = dataclasses.replace(info, signatures=(pv.sign_path(pv.parse_secret_key(impostor), info),))
    assert pv.check_signed(forged, {"hostA-1": fleet.publics["hostA-1"]}).reason == pv.BAD_SIGNATURE
    # the impostor's key itself would take it: the refusal is the key, not the signature's form
    assert pv.check_signed(forged, {"hostA-1": str(pv.parse_secret_key(impostor).public)}).accepted


def test_unknown_key_name_and_wrong_host(fleet):
    info_b = pv.path_info(fleet.signed_by_b, fleet.store)
    verdict = pv.check_signed(info_b, {"hostA-1": fleet.publics["hostA-1"]})
    assert (verdict.accepted, verdict.reason) == (False, pv.UNKNOWN_KEY) and "hostB-1" in verdict.detail
    both = dict(fleet.publics)
    assert pv.check_signed(info_b, both).accepted  # any trusted key, no expectation
    verdict = pv.check_signed(info_b, both, expected="hostA-1")
    assert (verdict.accepted, verdict.reason, verdict.key_name) == (False, pv.WRONG_HOST, "hostB-1")
    assert pv.check_signed(info_b, both, expected="builder-1").reason == pv.UNKNOWN_KEY  # not trusted at all
    # hostA's forged signature next to hostB's good one is named a forgery, not the wrong host
    name, raw = pv.parse_signature(pv.path_info(fleet.signed, fleet.store).signatures[0])
    mixed = dataclasses.replace(info_b, signatures=(*info_b.signatures, f"{name}:{base64.b64encode(raw).decode()}"))
    assert pv.check_signed(mixed, both, expected="hostA-1").reason == pv.BAD_SIGNATURE
    malformed = dataclasses.replace(info_b, signatures=("hostA-1:short", "garbage"))
    assert pv.check_signed(malformed, both).reason == pv.UNKNOWN_KEY


def test_missing_signature_refused(fleet):
    info = pv.path_info(fleet.signed, fleet.store)
    verdict = pv.check_signed(dataclasses.replace(info, signatures=()), dict(fleet.publics))
    assert (verdict.accepted, verdict.reason) == (False, pv.NO_SIGNATURE)


# --- bounded runs ----------------------------------------------------------------------------


def test_tool_runs_are_bounded():
    with pytest.raises(pv.ToolError, match="ran past"):
        pv.run_bounded(["sleep", "10"], timeout=0.2)
    with pytest.raises(pv.ToolError, match="printed more than"):
        pv.run_bounded(["yes"], max_bytes=1 << 16)
    with pytest.raises(pv.ToolError, match="exited 1"):
        pv.run_bounded(["false"])
    with pytest.raises(pv.ToolError, match="cannot run"):
        pv.run_bounded(["/nonexistent/pgod-tool"])
    with pytest.raises(pv.ToolError):
        pv.path_infos(["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"], "/dev/null/no-store")
