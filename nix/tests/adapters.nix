/*
  Entry point of tests/test_nix_adapters.py: hello-pgo (nix/tests/fixture)
  through pgod's stdenv adapters, over the fixture stdenv (host clang 14).

    nix-build adapters.nix -A profile --argstr spoolDir /tmp/spool
    nix-build adapters.nix -A optimize --argstr profile /nix/store/…-hello-pgo.profdata
*/
{
  spoolDir ? "/var/spool/pgod",
  # Store path of a merged, indexed profile, for the optimized variants.
  profile ? null,
}:

let
  pkgs = import ./fixture { };
  adapters = import ../../stdenv-adapters { };
  pgo = adapters.makePgo {
    inherit (pkgs) clangStdenv;
    inherit spoolDir;
  };
  mergedProfile = builtins.storePath profile;

  # A package in the older style: NIX_CFLAGS_COMPILE at the top level.
  topLevelFlags = pkgs.callPackage (
    { stdenv }:
    stdenv.mkDerivation {
      name = "top-level-flags";
      NIX_CFLAGS_COMPILE = "-DTOP_LEVEL=1";
    }
  ) { };
  # An LLVM in the store, as nixpkgs' clang stdenvs have theirs (the fixture's is
  # Debian's /usr/lib/llvm-14): what a profiled package must name in pgo.json
  # without keeping it in its runtime closure. libLLVM is copied for its size.
  storeLlvm = derivation {
    name = "fixture-llvm-14";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [
      "-c"
      # libLLVM wherever the loader finds it (Debian's libllvm14 puts it in the multiarch folder).
      ''
        mkdir -p $out/bin $out/lib
        cp /usr/lib/llvm-14/bin/llvm-profdata $out/bin/
        cp "$(ldd /usr/lib/llvm-14/bin/llvm-profdata | sed -n 's/^[[:space:]]*libLLVM[^ ]* => \([^ ]*\) .*/\1/p')" $out/lib/
      ''
    ];
  };
in
{
  plain = pkgs.hello;
  inherit storeLlvm;
  profileWithStoreLlvm = pkgs.hello.override {
    stdenv = adapters.withPgoProfile {
      inherit spoolDir;
      llvmProfdata = "${storeLlvm}/bin/llvm-profdata";
    } pkgs.clangStdenv;
  };
  profile = pgo.profile pkgs.hello;
  profileFe = pgo.profileWith { instrumentation = "fe"; } pkgs.hello;
  # Live reporting off: the runtime's exit write, one file of two parts per run.
  profileNoLive = pgo.profileWith { live = null; } pkgs.hello;
  live = {
    default = (pgo.profile pkgs.hello).pgo;
    every5s = (pgo.profileWith { live = { dumpIntervalSeconds = 5; }; } pkgs.hello).pgo;
    false = (pgo.profileWith { live = false; } pkgs.hello).pgo;
    every5sLink = (pgo.profileWith { live = { dumpIntervalSeconds = 5; }; } pkgs.hello).NIX_CFLAGS_LINK;
    noLiveLink = (pgo.profileWith { live = null; } pkgs.hello).NIX_CFLAGS_LINK;
    # The object's builder: the package's own clang (fixture: its compiler wrapper's target).
    objectCc = (pgo.profile pkgs.hello).pgo.liveObject.fixtureCc;
    csDefault = (pgo.csProfile { profile = mergedProfile; } pkgs.hello).pgo.live;
    csOff = (pgo.csProfile { profile = mergedProfile; live = null; } pkgs.hello).pgo.live;
  };
  csProfile = pgo.csProfile mergedProfile pkgs.hello;
  optimize = pgo.optimize mergedProfile pkgs.hello;
  optimizeTweaked = pgo.optimize mergedProfile (pkgs.hello.override { tweak = true; });

  flags = {
    env = (pgo.profile pkgs.hello).NIX_CFLAGS_COMPILE;
    link = (pgo.profile pkgs.hello).NIX_CFLAGS_LINK;
    topLevel = (pgo.profile topLevelFlags).NIX_CFLAGS_COMPILE;
    feEnv = (pgo.profileWith { instrumentation = "fe"; } pkgs.hello).NIX_CFLAGS_COMPILE;
  };

  # Each of these must end in a `throw` that says what is wrong.
  errors = {
    gccStdenv = adapters.withPgoProfile { } pkgs.stdenv;
    notElf = adapters.withPgoProfile { } (
      pkgs.clangStdenv
      // {
        hostPlatform = {
          system = "x86_64-darwin";
          isElf = false;
        };
      }
    );
    # nixpkgs releases before lib.systems gave platforms `isElf`.
    oldNixpkgs = adapters.withPgoProfile { } (
      pkgs.clangStdenv // { hostPlatform = { system = "x86_64-linux"; }; }
    );
    relativeSpool = (adapters.makePgo {
      inherit (pkgs) clangStdenv;
      spoolDir = "spool";
    }).profile pkgs.hello;
    noOverride = pgo.profile (pkgs.clangStdenv.mkDerivation { name = "bare"; });
    noStdenvArgument = pgo.profile (
      pkgs.callPackage ({ clangStdenv }: clangStdenv.mkDerivation { name = "no-stdenv-argument"; }) { }
    );
    plainStringProfile = pgo.optimize "/tmp/app.profdata" pkgs.hello;
    unknownInstrumentation = (pgo.profileWith { instrumentation = "sampling"; } pkgs.hello).NIX_CFLAGS_COMPILE;
    liveNotASetting = (pgo.profileWith { live = "yes"; } pkgs.hello).NIX_CFLAGS_LINK;
    liveUnknownKey = (pgo.profileWith { live = { interval = 5; }; } pkgs.hello).NIX_CFLAGS_LINK;
    liveZeroInterval = (pgo.profileWith { live = { dumpIntervalSeconds = 0; }; } pkgs.hello).NIX_CFLAGS_LINK;
  };
}
