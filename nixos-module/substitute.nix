/*
  The stand-in the system path holds for a profiled package (binary
  substitution, see pgod/optimize/substitution.py and DESIGN.md).

  It has the package's outputs and file tree, but every file is a symlink
  through `<substituteDir>/<name>/<output's store name>`, a link pgod points at
  the profiling build's output or, while it is active, at the optimized
  build's. So the derivation the user declared does not change; which binary
  satisfies it does, at the declared package's own place in the system path.
  The same idea as /run/opengl-driver.

  The stand-in refers to the profiling outputs (nix-support/pgod-substitute),
  so they stay in the system closure: they are what the links fall back to.

  Builtins only, like the adapters: the module passes nixpkgs' shell and
  coreutils, the tests the fixture's.

    substitute = import ./substitute.nix { shell, path, substituteDir };
    substitute "lua" pgo.profile-of-lua
*/
{
  # A bash, and a PATH with coreutils and findutils.
  shell,
  path,
  substituteDir,
}:

name: package:

let
  outputs = package.outputs or [ "out" ];
  # A store path's name without its hash, as pgod/optimize/substitution.py store_name.
  storeName = output: builtins.substring 33 (-1) (baseNameOf output);
  sources = map (output: {
    inherit output;
    source = "${package.${output}}";
    link = "${substituteDir}/${name}/${storeName package.${output}.outPath}";
  }) outputs;

  standIn = derivation {
    name = package.name;
    system = package.system or builtins.currentSystem;
    inherit outputs;
    builder = shell;
    PATH = path;
    # output source link, three words a line
    pgodSources = builtins.concatStringsSep "\n" (map (s: "${s.output} ${s.source} ${s.link}") sources);
    args = [
      "-euc"
      ''
        while read -r output source link; do
          dest="''${!output}"
          mkdir -p "$dest"
          (cd "$source" && find . -mindepth 1 -path ./nix-support -prune -o -print0) |
            while IFS= read -r -d "" rel; do
              rel="''${rel#./}"
              if [ -d "$source/$rel" ] && [ ! -L "$source/$rel" ]; then
                mkdir -p "$dest/$rel"
              else
                ln -s "$link/$rel" "$dest/$rel"
              fi
            done
          mkdir -p "$dest/nix-support"
          # buildEnv pulls these packages into the system path: keep them.
          if [ -f "$source/nix-support/propagated-user-env-packages" ]; then
            cp "$source/nix-support/propagated-user-env-packages" "$dest/nix-support/"
          fi
          printf '%s\n' "$source" > "$dest/nix-support/pgod-substitute"
        done <<< "$pgodSources"
      ''
    ];
  };
in
standIn
// {
  meta = package.meta or { };
  passthru = package.passthru or { };
  pgo = {
    variant = "substitute";
    inherit substituteDir;
    profiling = package;
  };
}
