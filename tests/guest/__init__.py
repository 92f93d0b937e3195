"""A booted Debian guest under QEMU, for tests that need a real systemd as PID 1.

The container the suite usually runs in has no systemd, so the parts of pgod that live in
systemd's world (its unit's sandboxing, user sessions, power loss) cannot be tried there. This
package boots a small Debian 12 guest instead:

- image.py builds the guest's base disk once (mmdebstrap) and caches it outside the checkout,
  keyed by a hash of its inputs;
- agent.py runs inside the guest and executes the host's commands sent over a virtio-serial port;
- machine.py is the host side: one guest per test (a qcow2 overlay of the base image, a 9p share,
  a QEMU process), with run/succeed/fail, power cut, shutdown and reboot.

Host side is stdlib-only, so scripts/guest runs with any python3.
"""
