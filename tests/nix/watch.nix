/*
  A build to watch (tests/test_watch_live.py): three derivations of the fixture
  stdenv, so Nix counts them (done of total) and reports each one's phases. The
  last one, `optimized`, prints a few lines in its buildPhase and then waits
  until a line can be read from the FIFO `gate`, which the test writes when it
  has seen the build's progress (at most 10 minutes, should the test die).

    nix-build watch.nix -A optimized --argstr gate /tmp/…/gate --argstr nonce 17
      [--argstr profile /nix/store/…profdata]

  `nonce` makes the three derivations new for each test, so they are built.
*/
{
  gate,
  nonce,
  profile ? null,
}:

let
  pkgs = import ../../nix/tests/fixture { };
  step =
    n:
    pkgs.stdenv.mkDerivation {
      pname = "watch-step${toString n}";
      version = nonce;
      unpackPhase = "mkdir -p $NIX_BUILD_TOP/source && cd $NIX_BUILD_TOP/source";
      buildPhase = "echo 'step ${toString n}: built'";
      installPhase = "mkdir -p $out && echo ${toString n} > $out/step";
    };
in
{
  optimized = pkgs.stdenv.mkDerivation {
    pname = "watch-optimized";
    version = nonce;
    steps = [
      (step 1)
      (step 2)
    ];
    profile = if profile == null then "" else builtins.storePath profile;
    inherit gate;
    unpackPhase = "mkdir -p $NIX_BUILD_TOP/source && cd $NIX_BUILD_TOP/source";
    buildPhase = ''
      for part in 1 2 3; do echo "compiling part $part of 3"; done
      echo "waiting at the gate"
      exec 3<>"$gate"
      read -r -t 600 -u 3 word
      echo "gate opened: $word"
    '';
    installPhase = ''
      mkdir -p $out
      echo "$steps" > $out/steps
    '';
  };
}
