{
  description = "pgod: profile-guided optimization as a NixOS service";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The stdenv adapters: withPgoProfile, withPgoOptimize, makePgo.
      lib = import ./stdenv-adapters { };

      overlays.default = import ./nix/overlay.nix;

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.pgod.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      packages = forAllSystems (pkgs: {
        pgod = pkgs.python3Packages.callPackage ./nix/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.pgod;
      });

      checks = forAllSystems (
        pkgs:
        let
          pgod = self.packages.${pkgs.stdenv.hostPlatform.system}.pgod;
        in
        {
          # The whole repository, so the tests of the Nix files run too (those
          # needing nix-build or the Debian clangs skip in the sandbox).
          pytest = pgod.overridePythonAttrs {
            src = self;
            doCheck = true;
          };
          nixos = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix { inherit self; });
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.pgod ];
          packages = [
            pkgs.clang
            pkgs.llvmPackages.llvm
            pkgs.dbus
            pkgs.nix
            pkgs.python3Packages.pytest
            pkgs.python3Packages.hypothesis
          ];
        };
      });
    };
}
