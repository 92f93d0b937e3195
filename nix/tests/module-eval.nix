/*
  Evaluates the pgod NixOS module with nixpkgs' real module system, the NixOS
  option stubs (nixos-stubs.nix) and the fake nixpkgs of fixture/, for
  tests/test_nixos_module.py. `configJSON` is the system's configuration as
  JSON, e.g. { "services": { "pgod": { "enable": true, "packages": ["hello"] } } }.
*/
{
  nixpkgsLib,
  configJSON ? "{}",
  # An overlay of this system's pkgs, by name: "none", "changesHello" (a tweaked
  # hello, as an overlay patching a profiled package), "addsAPackage".
  testOverlay ? "none",
}:

let
  lib = import nixpkgsLib;
  overlays = {
    none = [ ];
    changesHello = [ (final: prev: { hello = prev.hello.override { tweak = true; }; }) ];
    addsAPackage = [ (final: prev: { unrelated = prev.writeText "unrelated" ""; }) ];
  };
  pkgs = import ./fixture {
    inherit lib;
    overlays = overlays.${testOverlay};
    pgodData = ../../pgod/data;
  };

  system = lib.evalModules {
    modules = [
      ../../nixos-module
      ./nixos-stubs.nix
      { _module.args.pkgs = pkgs; }
      (builtins.fromJSON configJSON)
      { nixpkgs.overlays = overlays.${testOverlay}; }
    ];
  };

  inherit (system) config;
  service = config.systemd.services.pgod;
  userService = config.systemd.user.services.pgod-notify-agent;
  unitSummary = unit: {
    inherit (unit)
      description
      wantedBy
      partOf
      requires
      after
      environment
      serviceConfig
      ;
    path = map toString unit.path;
  };
in
{
  inherit config;

  # The files the module writes, to build.
  configFile = config.environment.etc."pgod/config.toml".source;
  buildFile = config.environment.etc."pgod/build.nix".source;
  dbusPolicy = builtins.head config.services.dbus.packages;

  # What the module sets, as JSON-friendly values.
  summary = {
    failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
    service = unitSummary service;
    userService = if config.systemd.user.services ? pgod-notify-agent then unitSummary userService else null;
    tmpfiles = config.systemd.tmpfiles.rules;
    tmpfilesPackages = map toString config.systemd.tmpfiles.packages;
    systemdPackages = map toString config.systemd.packages;
    generators = config.systemd.generators;
    package = toString config.services.pgod.package;
    sessionVariables = config.environment.sessionVariables;
    globalEnvironment = config.systemd.globalEnvironment;
    sysctl = config.boot.kernel.sysctl;
    activationScripts = lib.mapAttrs (_: script: script.text) config.system.activationScripts;
    dbusPackages = map toString config.services.dbus.packages;
    etc = lib.mapAttrs (_: file: toString file.source) config.environment.etc;
    systemPackages = map (p: {
      name = p.name;
      priority = p.meta.priority or null;
      pgoVariant = p.pgo.variant or null;
      substitutes = if p ? pgo.profiling then map toString (map (o: p.pgo.profiling.${o}) p.pgo.profiling.outputs) else null;
    }) config.environment.systemPackages;
    settings = config.services.pgod.settings;
    users = config.users.users;
  };
}
