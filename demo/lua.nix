/*
  The demo's package: the Lua 5.4 interpreter (sources from the lupa sdist on
  PyPI), built from onelua.c in one translation unit, in three variants through
  pgod's stdenv adapters on the nixpkgs-free test fixture (as tests/nix/loop.nix):

    nix-build demo/lua.nix -A profiling --argstr src …/lua-src --argstr spoolDir …/spool
    nix-build demo/lua.nix -A optimized --argstr src … --argstr spoolDir … --argstr profile /nix/store/…profdata
    nix-build demo/lua.nix -A csProfiling --argstr src … --argstr spoolDir … --argstr profile /nix/store/…profdata
    nix-build demo/lua.nix -A plain     --argstr src … --argstr spoolDir …

  `profiling` is IR-instrumented (the adapters' default, plain counters);
  `csProfiling` is the context-sensitive stage: optimized with the first
  stage's IR profile and instrumented again after inlining
  (-fcs-profile-generate); pgod builds it at the first threshold and puts it in
  use in place of `profiling`; its profiles, merged on top of the first ones,
  make the profile `optimized` is built from.

  `src` is a folder holding onelua.c and the other Lua sources; it is copied
  into the store by content, so the same sources give the same store paths.
  The compile command is the one benchmarks/pgo.py repeats by hand:
  `cc -O2 -DMAKE_LUA -o lua onelua.c -lm`, run in the source folder.
*/
{
  src,
  spoolDir,
  profile ? null,
}:

let
  pkgs = import ../nix/tests/fixture { };
  adapters = import ../stdenv-adapters { defaultSpoolDir = spoolDir; };
  pgo = adapters.makePgo { inherit (pkgs) clangStdenv; inherit spoolDir; };

  source = builtins.path {
    path = src;
    name = "lua-5.4-src";
  };

  needProfile =
    variant:
    if profile == null then
      throw "demo/lua.nix: the ${variant} variant needs --argstr profile /nix/store/…profdata"
    else
      builtins.storePath profile;

  lua = pkgs.callPackage (
    { stdenv }:
    stdenv.mkDerivation {
      pname = "lua";
      version = "5.4";
      src = source;

      # Lua's own makefile is a developer's one (gcc warnings, -march=native):
      # build the interpreter from its single-file amalgamation instead.
      # The compile's own time goes to the build log (`pgoctl logs lua`), so that
      # benchmarks/pgo.py can tell it from what pgod and Nix add around it.
      buildPhase = ''
        runHook preBuild
        TIMEFORMAT='lua.nix: compile took %R s'
        time $CC -O2 -DMAKE_LUA -o lua onelua.c -lm
        runHook postBuild
      '';
      installPhase = ''
        runHook preInstall
        mkdir -p $out/bin
        cp lua $out/bin/lua
        runHook postInstall
      '';

      meta.description = "Lua 5.4 interpreter (pgod demo)";
    }
  ) { };
in
{
  inherit lua;
  profiling = pgo.profile lua;
  optimized = pgo.optimize (needProfile "optimized") lua;
  csProfiling = pgo.csProfile (needProfile "csProfiling") lua;
  plain = lua.override { stdenv = pkgs.clangStdenv; };
}
