/*
  The options of a NixOS system that services.pgod sets or reads, declared
  with the types NixOS gives them, so tests/test_nixos_module.py can evaluate
  nixos-module/ with lib.evalModules outside NixOS.
*/
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  listOption = type: mkOption {
    type = types.listOf type;
    default = [ ];
  };

  unit = types.submodule {
    freeformType = types.attrsOf types.anything;
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = listOption types.str;
      partOf = listOption types.str;
      requires = listOption types.str;
      after = listOption types.str;
      restartTriggers = listOption types.unspecified;
      path = listOption (types.either types.package types.str);
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
    };
  };
in
{
  options = {
    assertions = listOption types.unspecified;
    warnings = listOption types.str;

    environment = {
      systemPackages = listOption types.package;
      profiles = listOption types.str;
      sessionVariables = mkOption {
        type = types.attrsOf (types.either types.str (types.listOf types.str));
        default = { };
      };
      etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption { type = types.path; };
          }
        );
        default = { };
      };
    };

    systemd = {
      services = mkOption {
        type = types.attrsOf unit;
        default = { };
      };
      user.services = mkOption {
        type = types.attrsOf unit;
        default = { };
      };
      tmpfiles.rules = listOption types.str;
      tmpfiles.packages = listOption types.package;
      packages = listOption types.package;
      generators = mkOption {
        type = types.attrsOf types.path;
        default = { };
      };
      globalEnvironment = mkOption {
        type = types.attrsOf (types.nullOr (types.either types.str types.path));
        default = { };
      };
    };

    services.dbus.packages = listOption types.path;

    boot.kernel.sysctl = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };

    system.activationScripts = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          deps = listOption types.str;
          text = mkOption { type = types.lines; };
        };
      });
      default = { };
    };

    users.groups = mkOption {
      type = types.attrsOf (types.submodule { });
      default = { };
    };

    users.users = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          isSystemUser = mkOption { type = types.bool; default = false; };
          group = mkOption { type = types.str; default = ""; };
          description = mkOption { type = types.str; default = ""; };
        };
      });
      default = { };
    };

    nix = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      package = mkOption {
        type = types.package;
        default = {
          type = "derivation";
          name = "nix-host";
          outPath = "/usr";
        };
      };
    };

    nixpkgs = {
      overlays = listOption types.unspecified;
      config = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
    };
  };

  # NixOS declares these groups itself.
  config.users.groups = {
    root = { };
    wheel = { };
  };
}
