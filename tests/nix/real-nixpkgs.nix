/*
  What tests/test_real_nixpkgs.py evaluates against a real nixpkgs checkout
  (opt-in: NIXPKGS=/path/to/nixpkgs): pgod's adapters on real packages, and a
  whole NixOS system with the module. Evaluation only: building needs the
  binary cache's bootstrap tools.
*/
{
  nixpkgs,
  packages ? [
    "lua"
    "zstd"
    "sqlite"
    "brotli"
    "snappy"
    "re2"
    "hello"
  ],
  system ? builtins.currentSystem,
}:

let
  overlay = import ../../nix/overlay.nix;
  pkgs = import nixpkgs {
    inherit system;
    overlays = [ overlay ];
    config = { };
  };
  # Where a mkDerivation argument ends up: at the top level, or under `env`
  # (structured attrs, or a package that sets env itself).
  flagsOf =
    drv: var:
    let
      attrs = drv.drvAttrs;
    in
    toString (attrs.${var} or (attrs.env.${var} or ""));
  profile = builtins.toFile "dummy.profdata" "";

  describe =
    name:
    let
      plain = pkgs.${name};
      profiled = pkgs.pgo.profile plain;
      optimized = pkgs.pgo.optimize profile plain;
    in
    {
      compile = flagsOf profiled "NIX_CFLAGS_COMPILE";
      link = flagsOf profiled "NIX_CFLAGS_LINK";
      optimizeCompile = flagsOf optimized "NIX_CFLAGS_COMPILE";
      isClang = profiled.stdenv.cc.isClang or false;
      stdenvName = profiled.stdenv.cc.name;
      outputs = profiled.outputs;
      plainOutputs = plain.outputs;
      structuredAttrs = profiled.__structuredAttrs or false;
      llvmProfdata = profiled.pgo.llvmProfdata;
      libllvm = "${profiled.stdenv.cc.cc.libllvm.out or profiled.stdenv.cc.cc.libllvm}";
      variant = profiled.pgoVariant;
      optimizeVariant = optimized.pgoVariant;
      drvPath = profiled.drvPath;
      optimizedDrvPath = optimized.drvPath;
    };

  nixos = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    inherit system;
    modules = [
      ../../nixos-module
      {
        nixpkgs.overlays = [ overlay ];
        services.pgod.enable = true;
        services.pgod.packages = [
          "lua"
          "zstd"
        ];
        boot.loader.grub.enable = false;
        fileSystems."/" = {
          device = "/dev/sda1";
          fsType = "ext4";
        };
        system.stateVersion = "26.05";
      }
    ];
  };
  inherit (nixos) config;
  unit = config.systemd.services.pgod;
in
{
  adapters = pkgs.lib.genAttrs packages describe;

  system = {
    toplevel = config.system.build.toplevel.drvPath;
    inherit (config) warnings;
    failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
    settings = config.services.pgod.settings;
    serviceConfig = {
      inherit (unit.serviceConfig) ExecStart ReadWritePaths CapabilityBoundingSet ProtectSystem;
    };
    buildNix = config.environment.etc."pgod/build.nix".source.text;
    buildNixFile = config.environment.etc."pgod/build.nix".source;
    activation = config.system.activationScripts.pgod-substitute.text or null;
    systemPath = map (p: p.name) config.environment.systemPackages;
    standIns = map (p: p.pgo.profiling.name) (
      builtins.filter (p: (p.pgo.variant or null) == "substitute") config.environment.systemPackages
    );
    profiles = config.environment.profiles;
    nixpkgsPath = "${pkgs.path}";
  };
}
