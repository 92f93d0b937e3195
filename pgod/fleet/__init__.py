"""The fleet (docs/design/fleet.md, issue 23): many machines, one optimized build, through Nix's
own stores, caches and signing keys. Members publish their merged profiles as store paths signed
with their host key; a builder checks each against the host keys it trusts, merges and builds
once, and members take its signed release. This subpackage holds that code; for now the
provenance of store paths (provenance.py: Nix base32, Nix's path fingerprint, `nix path-info`
read bounded, Ed25519 signatures made and checked with openssl). No daemon wiring yet."""
