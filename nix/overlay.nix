# pgod's overlay: the daemon, and the PGO stdenv adapters beside nixpkgs' own.
#
#   pkgs.pgod
#   pkgs.stdenvAdapters.withPgoProfile / withPgoCsProfile / withPgoOptimize
#   pkgs.pgo.profile pkgs.lua, pkgs.pgo.profileWith { instrumentation = "fe"; } pkgs.lua,
#   pkgs.pgo.csProfile ./lua.profdata pkgs.lua, pkgs.pgo.optimize ./lua.profdata pkgs.lua
final: prev:

let
  adapters = import ../stdenv-adapters { };
in
{
  pgod = final.python3Packages.callPackage ./package.nix { };

  stdenvAdapters = prev.stdenvAdapters // {
    inherit (adapters) withPgoProfile withPgoCsProfile withPgoOptimize;
  };

  pgo = adapters.makePgo { inherit (final) clangStdenv; };
}
