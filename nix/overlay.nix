# pgod's overlay: the daemon, and the PGO stdenv adapters beside nixpkgs' own.
#
#   pkgs.pgod
#   pkgs.stdenvAdapters.withPgoProfile / withPgoOptimize
#   pkgs.pgo.profile pkgs.lua, pkgs.pgo.optimize ./lua.profdata pkgs.lua
final: prev:

let
  adapters = import ../stdenv-adapters { };
in
{
  pgod = final.python3Packages.callPackage ./package.nix { };

  stdenvAdapters = prev.stdenvAdapters // {
    inherit (adapters) withPgoProfile withPgoOptimize;
  };

  pgo = adapters.makePgo { inherit (final) clangStdenv; };
}
