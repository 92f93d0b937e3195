/*
  pgod, the daemon, and pgoctl, its client, from this repository.

  Callable with python3Packages.callPackage (the overlay and flake.nix do so).
*/
{
  lib,
  buildPythonApplication,
  setuptools,
  watchdog,
  sqlalchemy,
  pydbus,
  pygobject3,
  structlog,
  pyelftools,
  matplotlib,
  glib,
  gobject-introspection,
  wrapGAppsNoGuiHook,
  pytestCheckHook,
  hypothesis,
  dbus,
  coreutils,
}:

assert lib.assertMsg (lib ? fileset) "pgod: this nixpkgs is too old (its lib has no `fileset`). Use nixpkgs 23.11 or newer.";

buildPythonApplication {
  pname = "pgod";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../pgod
      ../tests
      ../testbed # the shared harness the tests import
      # the tests' Nix settings (conftest.py imports them)
      ../demo/__init__.py
      ../demo/nixlocal.py
      (lib.fileset.maybeMissing ../README.md)
    ];
  };

  build-system = [ setuptools ];

  # pydbus reaches D-Bus through GLib's Gio: the wrapper must find the GLib,
  # GObject and Gio typelibs.
  nativeBuildInputs = [
    gobject-introspection
    wrapGAppsNoGuiHook
  ];
  buildInputs = [ glib ];

  dependencies = [
    watchdog
    sqlalchemy
    pydbus
    pygobject3
    structlog
    pyelftools
    matplotlib # pgoctl report's charts
  ];

  # pyproject.toml caps PyGObject for pip users at releases it was tried with;
  # nixpkgs pins the one its package set is tested with.
  pythonRelaxDeps = [ "PyGObject" ];

  # One wrapper per program, holding both the Python and the GObject
  # environment, instead of a GApps wrapper around a Python wrapper.
  dontWrapGApps = true;
  preFixup = ''
    makeWrapperArgs+=("''${gappsWrapperArgs[@]}")
  '';

  # The unit, user unit, spool generator, tmpfiles, sysctl and D-Bus files, as every
  # installation gets them: the NixOS module takes them through systemd.packages.
  postInstall = ''
    sh pgod/data/install-system-files.sh pgod/data $out $out/bin ${lib.makeBinPath [ coreutils ]}
  '';

  # The test suite runs as the flake's `checks.pytest`; tests that need tools
  # missing from the build sandbox (the Debian clangs, nix-build) skip.
  doCheck = false;
  nativeCheckInputs = [
    pytestCheckHook
    hypothesis
    dbus
  ];

  pythonImportsCheck = [ "pgod" ];

  meta = {
    description = "Profile-guided optimization as a system service";
    license = lib.licenses.mit;
    mainProgram = "pgod";
    platforms = lib.platforms.linux;
  };
}
