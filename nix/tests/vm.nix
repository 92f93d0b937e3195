/*
  NixOS VM test (flake.nix `checks.<system>.nixos`): services.pgod with GNU
  hello. The profiling hello writes raw profiles, pgod counts them in
  `pgoctl status --json`, crosses the threshold, rebuilds hello optimized
  through nix-daemon inside the VM (offline: every build input is in the
  VM's store) and, with activation = "auto", substitutes it for the profiling
  hello wherever the system path reaches.
*/
{ self }:

{
  name = "pgod";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.pgod = {
        enable = true;
        packages = [ "hello" ];
        thresholdMB = 1;
        activation = "auto";
      };

      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "wheel" ];
      };

      # The optimized rebuild has the same inputs as a clang build of hello.
      virtualisation.additionalPaths = [ (pkgs.hello.override { stdenv = pkgs.clangStdenv; }).inputDerivation ];
      nix.settings.substituters = lib.mkForce [ ];
      virtualisation.memorySize = 3072;
      virtualisation.cores = 2;
    };

  testScript = ''
    import json
    import time


    def hello_status():
        document = json.loads(machine.succeed("pgoctl status --json"))
        return next(p for p in document["packages"] if p["name"] == "hello")


    def wait_for(predicate, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not predicate(status := hello_status()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {status}"
            time.sleep(2)


    def run_hello(times):
        machine.succeed(f"su - alice -c 'for i in $(seq {times}); do hello >/dev/null; done'")


    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("pgod.service")

    with subtest("the spool is world-writable and sticky"):
        machine.succeed("test \"$(stat -c %a /var/spool/pgod)\" = 1777")

    with subtest("login shells have LLVM_PROFILE_FILE and the profiling hello"):
        machine.succeed("su - alice -c 'echo $LLVM_PROFILE_FILE' | grep -Fx /var/spool/pgod/%p.profraw")
        machine.succeed("su - alice -c 'cat $(dirname $(readlink -f $(command -v hello)))/../nix-support/pgo.json' | grep -F '\"variant\": \"profile\"'")

    with subtest("a unit without the environment still profiles into the spool (baked-in path)"):
        # Transient units get neither the login environment nor the
        # Environment= lines NixOS writes into its units.
        machine.succeed("systemd-run --wait --pipe --property=User=alice $(readlink -f /run/current-system/sw/bin/hello)")
        wait_for(lambda status: status["files"] >= 1 or status["state"] != "profiling", "hello's first profile")

    with subtest("pgod counts the profiles of login shells"):
        before = hello_status()["files"]
        run_hello(20)
        wait_for(lambda status: status["files"] >= before + 20 or status["state"] != "profiling", "20 more profiles")

    with subtest("past the threshold pgod builds the optimized hello and activates it"):
        deadline = time.monotonic() + 1800
        status = hello_status()
        while status["state"] != "active":
            assert status["state"] != "failed", f"optimized build failed: {status['last_error']}"
            assert time.monotonic() < deadline, f"hello never became active: {status}"
            if status["state"] == "profiling":
                run_hello(100)
            time.sleep(5)
            status = hello_status()
        optimized = status["optimized"]
        report = json.loads(machine.succeed(f"cat {optimized}/nix-support/pgo-warnings.json"))
        assert report["profile_functions"] and report["mismatched_functions"] < report["profile_functions"], report

    with subtest("everything that reaches the system path runs the optimized hello"):
        machine.succeed(f"test \"$(su - alice -c 'readlink -f $(command -v hello)')\" = {optimized}/bin/hello")
        machine.succeed(f"test \"$(readlink -f /run/current-system/sw/bin/hello)\" = {optimized}/bin/hello")
        machine.succeed(
            "mkdir -p /tmp/noprofile && chmod 1777 /tmp/noprofile && systemd-run --wait --pipe "
            "--setenv=LLVM_PROFILE_FILE=/tmp/noprofile/%p.profraw /run/current-system/sw/bin/hello "
            "&& test -z \"$(ls /tmp/noprofile)\""
        )

    with subtest("deactivate gives the system path back the profiling hello, and a reboot keeps the choice"):
        machine.succeed("pgoctl deactivate hello")
        machine.succeed("readlink -f /run/current-system/sw/bin/hello | grep -v " + optimized)
        machine.succeed("pgoctl activate hello")
        machine.shutdown()
        machine.start()
        machine.wait_for_unit("multi-user.target")
        machine.succeed(f"test \"$(readlink -f /run/current-system/sw/bin/hello)\" = {optimized}/bin/hello")
  '';
}
