/*
  Stdenv adapters for profile-guided optimization with pgod.

  Written in the style of nixpkgs' pkgs/stdenv/adapters.nix: each adapter is a
  curried function that takes a stdenv and returns a changed one (through
  `stdenv.override`), and compiler or linker flags are appended to
  `NIX_CFLAGS_COMPILE` / `NIX_CFLAGS_LINK`, never replacing what a package sets.

  The file uses builtins only, so the very same code serves nixpkgs users (the
  overlay and the NixOS module import it) and the nixpkgs-free test fixture in
  nix/tests/fixture.

  Usage:
    adapters = import ./stdenv-adapters { };
    pgo = adapters.makePgo { inherit (pkgs) clangStdenv; };
    pgo.profile pkgs.lua                        # instrumented, writes raw profiles
    pgo.optimize ./lua.profdata pkgs.lua        # rebuilt with the merged profile
*/
{
  # Where instrumented programs write their raw profiles unless LLVM_PROFILE_FILE
  # says otherwise: the spool pgod watches.
  defaultSpoolDir ? "/var/spool/pgod",
}:

let
  # The setup hook every adapted build sources (it is put in nativeBuildInputs):
  # writes nix-support/pgo.json or nix-support/pgo-warnings.json in fixup.
  setupHook = ./pgo-setup-hook.sh;

  # clang's warnings about how well a profile matches the code being compiled.
  # They are worth counting, never worth failing a build for (-Werror packages).
  # (IR profiles' mismatches come as -Wbackend-plugin, on by default.)
  profileMatchWarnings = [
    "profile-instr-unprofiled"
    "profile-instr-out-of-date"
    "profile-instr-missing"
  ];

  describe = pkg: pkg.name or pkg.pname or "this package";

  hasWhitespace = s: builtins.match ".*[[:space:]].*" s != null;

  # Append `flags` to the variable `var` (NIX_CFLAGS_COMPILE or NIX_CFLAGS_LINK)
  # of a mkDerivation argument set. Older packages set these at the top level,
  # newer ones under `env`; nixpkgs refuses the same name in both places, so the
  # flags go where the package already has the variable, else under `env`.
  appendFlags =
    var: flags: attrs:
    let
      append =
        old:
        let
          before = builtins.toString old;
        in
        (if before == "" then "" else before + " ") + builtins.toString flags;
    in
    if attrs ? ${var} then
      attrs // { ${var} = append attrs.${var}; }
    else
      attrs // { env = (attrs.env or { }) // { ${var} = append (attrs.env.${var} or ""); }; };

  # Apply `f` (prevAttrs -> attrs) to mkDerivation arguments, which may be an
  # attribute set or a `finalAttrs: { … }` function.
  extendArgs =
    f: args:
    if builtins.isFunction args then finalAttrs: f (args finalAttrs) else f args;

  # A stdenv whose mkDerivation applies `f` to every package's arguments.
  #
  # nixpkgs keeps the default `mkDerivationFromStdenv` to itself, so when no
  # adapter before this one set it, the given stdenv's own mkDerivation is the
  # one underneath. That is exact as long as nothing changes the compiler after
  # this adapter: apply the PGO adapters last (makePgo does).
  extendMkDerivationArgs =
    stdenv: f:
    stdenv.override (old: {
      mkDerivationFromStdenv =
        stdenvSelf: args:
        let
          mkDerivationSuper =
            if old ? mkDerivationFromStdenv then
              old.mkDerivationFromStdenv stdenvSelf
            else
              stdenv.mkDerivation;
        in
        mkDerivationSuper (extendArgs f args);
    });

  # The stdenv, if the PGO adapters can handle it; else a `throw` saying why.
  checkStdenv =
    who: stdenv:
    let
      host = stdenv.hostPlatform;
      build = stdenv.buildPlatform;
    in
    if !(stdenv.cc.isClang or false) then
      throw "${who}: the compiler of this stdenv (${stdenv.cc.name or "unknown"}) is not clang. clang's -fprofile-instr-* instrumentation needs a clang stdenv: use pkgs.clangStdenv, or pgo.profile / pgo.optimize, which move a package there."
    else if !(host ? isElf) then
      throw "${who}: this nixpkgs is too old for pgod: its stdenv.hostPlatform has no `isElf`. Use nixpkgs 23.11 or newer."
    else if !host.isElf then
      throw "${who}: ${host.system or "this platform"} does not produce ELF files. pgod attributes raw profiles by GNU build-id, which only ELF binaries carry."
    else if (build.config or build.system or null) != (host.config or host.system or null) then
      throw "${who}: cross-compiling (${build.config or build.system or "?"} to ${host.config or host.system or "?"}) is not supported. Profiles are written and merged on the machine that runs the program, so build its profiling and optimized variants natively there."
    else
      stdenv;

  # llvm-profdata of the LLVM release the stdenv's clang belongs to: raw
  # profiles carry no compatibility promise across releases.
  matchingLlvmProfdata =
    who: stdenv:
    let
      libllvm = stdenv.cc.cc.libllvm or null;
    in
    if libllvm == null then
      throw "${who}: cannot tell which llvm-profdata matches ${stdenv.cc.name or "this stdenv's clang"}; pass `llvmProfdata`, the llvm-profdata of the same LLVM release as the compiler."
    else
      "${libllvm.out or libllvm}/bin/llvm-profdata";

  # A `profile` argument of withPgoOptimize as a string Nix treats as an input
  # of the build (a path literal is copied to the store, a store path string
  # must carry its context).
  profileInput =
    profile:
    if builtins.isPath profile || profile ? outPath then
      "${profile}"
    else if builtins.isString profile && builtins.hasContext profile then
      profile
    else if builtins.isString profile then
      throw ''withPgoOptimize: the profile "${profile}" is a plain string, so Nix would not make it an input of the build (and a sandboxed build could not read it). Pass a path (./app.profdata) or `builtins.storePath "/nix/store/…-app.profdata"`.''
    else
      throw "withPgoOptimize: the profile must be a path or a store path string, not a ${builtins.typeOf profile}.";

  # A profile argument: a path or store path string, or a set with `profile`
  # and options.
  profileOptions =
    profileArg:
    if builtins.isAttrs profileArg && !(profileArg ? outPath) then profileArg else { profile = profileArg; };
  # The `live` argument of the instrumenting adapters: null (off) or
  # { dumpIntervalSeconds = D; }. true: on with the default interval; false: off.
  defaultDumpIntervalSeconds = 60;
  liveSettings =
    who: live:
    let
      known = [ "dumpIntervalSeconds" ];
      unknown = builtins.filter (n: !(builtins.elem n known)) (builtins.attrNames live);
      interval = live.dumpIntervalSeconds or defaultDumpIntervalSeconds;
    in
    if live == null || live == false then
      null
    else if live == true then
      { dumpIntervalSeconds = defaultDumpIntervalSeconds; }
    else if !(builtins.isAttrs live) then
      throw "${who}: `live` must be true, false, null or { dumpIntervalSeconds = N; }, got a ${builtins.typeOf live}."
    else if unknown != [ ] then
      throw "${who}: `live` takes only dumpIntervalSeconds, got ${builtins.concatStringsSep ", " unknown}."
    else if !(builtins.isInt interval) || interval < 1 || interval > 86400 then
      throw "${who}: live.dumpIntervalSeconds must be a whole number of seconds from 1 to 86400, got ${builtins.toJSON interval}."
    else
      { dumpIntervalSeconds = interval; };

  # The live object (live/pgod-live.c) compiled by the stdenv's own clang, not
  # instrumented, position-independent (it goes into shared libraries too), its
  # symbols hidden (each module keeps its own copy, bound to its own runtime),
  # with the adapter's dump interval as the default of PGOD_LIVE_INTERVAL_S.
  liveObject =
    stdenv: settings:
    stdenv.mkDerivation {
      name = "pgod-live-object-${toString settings.dumpIntervalSeconds}s";
      src = ./live;
      dontConfigure = true;
      buildPhase = ''
        runHook preBuild
        $CC -O2 -fPIC -fvisibility=hidden -Wall -DPGOD_LIVE_DEFAULT_INTERVAL_S=${toString settings.dumpIntervalSeconds} \
          -c pgod-live.c -o pgod-live.o
        runHook postBuild
      '';
      installPhase = ''
        runHook preInstall
        mkdir -p $out/lib
        cp pgod-live.o $out/lib/pgod-live.o
        runHook postInstall
      '';
      dontStrip = true;
      dontPatchELF = true;
    };

  # The instrumenting adapters' common part: flags for `kind` ("fe", "ir" or
  # "cs-ir", the last on top of `profile`), the live object on every link
  # (`live`, see liveSettings), the setup hook writing pgo.json.
  instrumentWith =
    who:
    {
      spoolDir,
      llvmProfdata,
      atomicCounters,
      kind,
      variant,
      profile,
      live,
    }:
    stdenv:
    let
      stdenv' = checkStdenv who stdenv;
      liveOn = liveSettings who live;
      # The package's own clang (the stdenv before this adapter) builds the object.
      liveLink = if liveOn == null then [ ] else [ "${liveObject stdenv' liveOn}/lib/pgod-live.o" ];
      profdata =
        if llvmProfdata != null then
          builtins.toString llvmProfdata
        else
          matchingLlvmProfdata who stdenv';
      path = "${spoolDir}/%p.profraw";
      bakedPath = [ "-Xclang" "-fprofile-instrument-path=${path}" ];
      instrument =
        {
          fe = [ "-fprofile-instr-generate=${path}" ];
          ir = [ "-fprofile-generate" ] ++ bakedPath;
          cs-ir = [ "-fprofile-use=${profile}" "-fcs-profile-generate" ] ++ bakedPath;
        }
        .${kind}
          or (throw ''${who}: instrumentation must be "ir" or "fe", got "${kind}".'');
      # clang before 19 ignores -fprofile-update=atomic with IR instrumentation (no
      # lock prefix: LLVM-NOTES.md); the lowering pass's own option makes every
      # counter update atomic on every clang. Given through -Xclang, so only the
      # compile sees it: the driver would warn about an unused -mllvm at link time.
      update =
        if atomicCounters then
          [
            "-fprofile-update=atomic"
            "-Xclang"
            "-mllvm"
            "-Xclang"
            "-instrprof-atomic-counter-update-all"
          ]
        else
          [ ];
      linkUpdate = if atomicCounters then [ "-fprofile-update=atomic" ] else [ ];
      # The link needs only the driver flag that pulls in the profile runtime.
      linkInstrument =
        {
          fe = instrument;
          ir = [ "-fprofile-generate" ];
          cs-ir = [ "-fcs-profile-generate" ];
        }
        .${kind};
    in
    if builtins.substring 0 1 spoolDir != "/" || hasWhitespace spoolDir then
      throw ''${who}: spoolDir must be an absolute path without white space (it becomes part of a compiler flag), got "${spoolDir}".''
    else
      builtins.seq instrument (
        builtins.seq liveOn (
        extendMkDerivationArgs stdenv' (
          prevAttrs:
          let
            flagged = appendFlags "NIX_CFLAGS_LINK" (linkInstrument ++ linkUpdate ++ [ "-Wl,--build-id" ] ++ liveLink) (
              appendFlags "NIX_CFLAGS_COMPILE" (instrument ++ update) prevAttrs
            );
          in
          flagged
          // {
            nativeBuildInputs = (prevAttrs.nativeBuildInputs or [ ]) ++ [ setupHook ];
            pgoVariant = variant;
            pgoInstrumentation = kind;
            pgoLlvmProfdata = profdata;
            # pgo.json's "live": the interval, or null (empty: off)
            pgoLiveDumpIntervalSeconds = if liveOn == null then "" else toString liveOn.dumpIntervalSeconds;
            passthru = (prevAttrs.passthru or { }) // {
              pgo = {
                inherit variant spoolDir;
                instrumentation = kind;
                llvmProfdata = profdata;
                live = liveOn;
                liveObject = if liveOn == null then null else liveObject stdenv' liveOn;
              } // (if profile == null then { } else { inherit profile; });
            };
          }
        )
        )
      );

in
rec {
  /*
    Instrument every package built with this stdenv for clang's profile-guided
    optimization, writing raw profiles into the spool.

    `instrumentation` chooses clang's kind:
      "ir" (default)  IR instrumentation (-fprofile-generate): counters placed
                      after the first optimizations, which measured 1.17× on
                      Lua against front-end PGO's 1.145× (LLVM-NOTES.md);
      "fe"            front-end instrumentation (-fprofile-instr-generate),
                      counters on the source's own constructs.
    Either way the profile path is baked into the binaries
    (`<spoolDir>/%p.profraw`), so programs started by system services, cron
    jobs or sudo, which drop the environment, still write to the spool;
    LLVM_PROFILE_FILE overrides it where set. For IR instrumentation the path
    goes to clang's -cc1 directly (-fprofile-instrument-path): the driver's
    `-fprofile-generate=DIR` names files `default_%m.profraw`, and `%m` turns on
    the runtime's online merging, which the spool must never allow.

    Counters are plain increments by default, as clang's and GCC's own
    defaults (GCC goes atomic only with -pthread): threads hitting one counter
    at once can lose an increment. Measured (benchmarks/README.md): two
    threads on one counter lost 0 to 1.8 % of 400 M counts, while atomic
    counters made the demo's single-threaded Lua 2.0× slower than plain -O2
    instead of 1.2× (clang 14 and 19). `atomicCounters = true` makes every counter update
    atomic on every clang (before 19, -fprofile-update=atomic alone leaves IR
    counters plain), for a package whose threads' exact counts matter.

    Links also get `-Wl,--build-id`: pgod attributes a raw profile to the ELF
    file whose GNU build-id it names. Every output gets `nix-support/pgo.json`
    listing the build-ids of all ELF files of all outputs, the instrumentation
    kind and the llvm-profdata that can merge their profiles.

    `live` (default `true`: on, a snapshot every 60 s): programs that keep
    running report their counts while they run, not only at exit. Every link
    gets live/pgod-live.c, compiled by the stdenv's own clang: a thread in each
    instrumented module writes a cumulative snapshot of that module's counters
    to `<spool>/live-<pid>-<random>.profraw` every `dumpIntervalSeconds` when
    a counter moved, and a last one at exit, under the lock protocol of
    docs/design/live-protocol.md; the runtime's own exit file is then not
    written. `live = { dumpIntervalSeconds = 10; }` changes the interval
    (PGOD_LIVE_INTERVAL_S overrides it per process, 0 turns it off);
    `live = null` or `false` leaves the runtime's exit write alone. pgo.json
    records it as `"live": {"dump_interval_s": D}` or `"live": null`.

    `llvmProfdata` defaults to the one of the stdenv's clang
    (`stdenv.cc.cc.libllvm`). The stdenv must use clang and target ELF.

    Example:
      hello-profiling = pkgs.hello.override {
        stdenv = withPgoProfile { spoolDir = "/var/spool/pgod"; } pkgs.clangStdenv;
      };
  */
  withPgoProfile =
    {
      spoolDir ? defaultSpoolDir,
      llvmProfdata ? null,
      instrumentation ? "ir",
      atomicCounters ? false,
      live ? true,
    }:
    instrumentWith "withPgoProfile" {
      inherit spoolDir llvmProfdata atomicCounters live;
      kind = instrumentation;
      variant = "profile";
      profile = null;
    };

  /*
    The context-sensitive stage: build every package optimized with an IR
    profile (`profile`, as withPgoOptimize takes it) and instrumented again
    after inlining (-fcs-profile-generate). Its programs are already faster
    than the first profiling build's and write "CS" raw profiles to the
    spool; merged together with `profile` they make the final profile, which
    withPgoOptimize builds from (LLVM-NOTES.md: 1.197× on Lua against IR
    PGO's 1.172×). pgod puts this variant in use in place of the first
    profiling build while it collects the second stage. `live` as
    withPgoProfile takes it, in the set form of the argument.
  */
  withPgoCsProfile =
    profileArg: stdenv:
    let
      options = profileOptions profileArg;
    in
    instrumentWith "withPgoCsProfile" {
      spoolDir = options.spoolDir or defaultSpoolDir;
      llvmProfdata = options.llvmProfdata or null;
      atomicCounters = options.atomicCounters or false;
      live = options.live or true;
      kind = "cs-ir";
      variant = "cs-profile";
      profile = profileInput options.profile;
    } stdenv;

  /*
    Build every package with this stdenv optimized by a merged, indexed profile
    (`llvm-profdata merge` output): `-fprofile-use=<profile>`, which reads
    front-end, IR and context-sensitive profiles alike (clang tells them by the
    file's header).

    clang's profile mismatch warnings (-Wprofile-instr-unprofiled,
    -Wprofile-instr-out-of-date, -Wprofile-instr-missing) are enabled, never
    errors, and counted into `nix-support/pgo-warnings.json` of every output,
    so reports can show how much of the profile matched the code.

    `profile` is a path, a store path string with context
    (`builtins.storePath`), or `{ profile; llvmProfdata ? …; }` where
    llvmProfdata (default: the stdenv clang's) only serves to record the
    profile's function count.

    Example:
      hello-optimized = pkgs.hello.override {
        stdenv = withPgoOptimize ./hello.profdata pkgs.clangStdenv;
      };
  */
  withPgoOptimize =
    profileArg: stdenv:
    let
      options = profileOptions profileArg;
      stdenv' = checkStdenv "withPgoOptimize" stdenv;
      profile = profileInput options.profile;
      profdata =
        if options.llvmProfdata or null != null then
          builtins.toString options.llvmProfdata
        else if (stdenv'.cc.cc or { }) ? libllvm then
          matchingLlvmProfdata "withPgoOptimize" stdenv'
        else
          "";
      flags =
        [ "-fprofile-use=${profile}" ]
        # IR profiles: a function without data is reported only when asked (front-end
        # profiles report it through -Wprofile-instr-missing).
        ++ [ "-mllvm" "-pgo-warn-missing-function" ]
        ++ map (w: "-W${w}") profileMatchWarnings
        ++ map (w: "-Wno-error=${w}") (profileMatchWarnings ++ [ "backend-plugin" ]);
    in
    # Check the profile argument now, not when a build first needs its flags.
    builtins.seq profile (
      extendMkDerivationArgs stdenv' (
        prevAttrs:
        appendFlags "NIX_CFLAGS_COMPILE" flags prevAttrs
        // {
          nativeBuildInputs = (prevAttrs.nativeBuildInputs or [ ]) ++ [ setupHook ];
          pgoVariant = "optimize";
          pgoProfile = profile;
          pgoLlvmProfdata = profdata;
          passthru = (prevAttrs.passthru or { }) // {
            pgo = {
              variant = "optimize";
              inherit profile;
            };
          };
        }
      )
    );

  /*
    The two variants of any package for pgod, given the clang stdenv to move
    gcc-built packages to (packages already built with clang keep their own).

      profile     : package -> its instrumented variant (`instrumentation`)
      profileWith : withPgoProfile options -> package -> the same, per package
      csProfile   : IR profile -> package -> its context-sensitive stage
      optimize    : profile -> package -> its variant optimized with `profile`

    A package qualifies when it comes from callPackage (has `override`) and
    takes a `stdenv` argument; anything else ends in a `throw` saying so.

    Example:
      pgo = makePgo { inherit (pkgs) clangStdenv; };
      environment.systemPackages = [ (pgo.profile pkgs.lua) ];
      lua-fast = pgo.optimize ./lua.profdata pkgs.lua;
  */
  makePgo =
    {
      clangStdenv,
      spoolDir ? defaultSpoolDir,
      instrumentation ? "ir",
    }:
    let
      clangStdenvFor =
        pkg:
        let
          own = pkg.stdenv or null;
        in
        if own != null && (own.cc.isClang or false) then own else clangStdenv;

      withStdenv =
        who: pkg: stdenv:
        let
          takes = pkg.override.__functionArgs or null;
        in
        if !(builtins.isAttrs pkg && pkg ? override) then
          throw "pgo.${who}: ${describe pkg} has no `override` (it does not come from callPackage), so its stdenv cannot be replaced. Build it with `stdenv = withPgoProfile { } clangStdenv` yourself."
        else if takes != null && !(takes ? stdenv) then
          throw "pgo.${who}: ${describe pkg} does not take a `stdenv` argument (it takes: ${builtins.concatStringsSep ", " (builtins.attrNames takes)}), so its compiler cannot be changed with override. Only packages built by stdenv.mkDerivation from a C or C++ compiler can be profiled this way."
        else
          pkg.override { inherit stdenv; };
    in
    rec {
      profile = profileWith { };

      # `options`: withPgoProfile's (instrumentation = "fe" for front-end PGO).
      profileWith =
        options: pkg:
        withStdenv "profile" pkg (withPgoProfile ({ inherit spoolDir instrumentation; } // options) (clangStdenvFor pkg));

      csProfile =
        profile: pkg:
        withStdenv "csProfile" pkg (
          withPgoCsProfile ({ inherit spoolDir; } // profileOptions profile) (clangStdenvFor pkg)
        );

      optimize =
        profile: pkg: withStdenv "optimize" pkg (withPgoOptimize profile (clangStdenvFor pkg));
    };
}
