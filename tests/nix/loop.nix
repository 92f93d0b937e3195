/*
  The package pgod's closed-loop tests optimize: the fixture's hello-pgo, in its
  three variants, through the real stdenv adapters on the nixpkgs-free fixture.

    nix-build loop.nix -A profiling --argstr spoolDir /tmp/…/spool
    nix-build loop.nix -A optimized.out --argstr spoolDir … --argstr profile /nix/store/…profdata
    nix-build loop.nix -A csProfiling.out --argstr spoolDir … --argstr profile /nix/store/…profdata

  `tweak = true` stands for an upgrade: the same package, one function changed.
  `standIn` is what a NixOS system path holds for the profiling variant
  (nixos-module/substitute.nix), its links going through `substituteDir`.
*/
{
  spoolDir,
  profile ? null,
  tweak ? false,
  substituteDir ? "/run/pgod/packages",
}:

let
  pkgs = import ../../nix/tests/fixture { };
  adapters = import ../../stdenv-adapters { defaultSpoolDir = spoolDir; };
  pgo = adapters.makePgo { inherit (pkgs) clangStdenv; inherit spoolDir; };
  hello = pkgs.hello.override { inherit tweak; };
  substitute = import ../../nixos-module/substitute.nix {
    shell = "/bin/bash";
    path = "/usr/bin:/bin";
    inherit substituteDir;
  };
in
{
  profiling = pgo.profile hello;
  profilingFe = pgo.profileWith { instrumentation = "fe"; } hello;
  # The context-sensitive stage's build, from the first stage's IR profile.
  csProfiling = pgo.csProfile (builtins.storePath profile) hello;
  standIn = substitute "hello" (pgo.profile hello);
  optimized = pgo.optimize (builtins.storePath profile) hello;
  plain = pkgs.hello.override { inherit tweak; stdenv = pkgs.clangStdenv; };
}
