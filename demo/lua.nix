/*
  The demo's package: the Lua 5.4 interpreter (sources from the lupa sdist on
  PyPI), built from onelua.c in one translation unit, in three variants through
  pgod's stdenv adapters on the nixpkgs-free test fixture (as tests/nix/loop.nix):

    nix-build demo/lua.nix -A profiling --argstr src …/lua-src --argstr spoolDir …/spool
    nix-build demo/lua.nix -A optimized --argstr src … --argstr spoolDir … --argstr profile /nix/store/…profdata
    nix-build demo/lua.nix -A plain     --argstr src … --argstr spoolDir …

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
  optimized =
    if profile == null then
      throw "demo/lua.nix: the optimized variant needs --argstr profile /nix/store/…profdata"
    else
      pgo.optimize (builtins.storePath profile) lua;
  plain = lua.override { stdenv = pkgs.clangStdenv; };
}
