"""Scripts a flooding user runs (as uid nobody), shared by tests/test_fairness.py and
benchmarks/fairness.py: ``python -c SCRIPT SPOOL N``."""

# N copies of the raw profile read from stdin, as fast as they can be written; with a float N,
# for N seconds instead, at RATE files a second if a third argument gives one (0: at once).
# Prints how many it wrote.
FLOOD = """
import sys, time
spool, amount = sys.argv[1], sys.argv[2]
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
data = sys.stdin.buffer.read()
seconds = float(amount) if "." in amount else None
count = None if seconds is not None else int(amount)
began = time.monotonic()
index = 0
while (index < count) if count is not None else (time.monotonic() - began < seconds):
    if rate and index >= (time.monotonic() - began) * rate:
        time.sleep(0.001)
        continue
    with open(f"{spool}/flood-{index}.profraw", "wb") as out:
        out.write(data)
    index += 1
print(index)
"""

# N names created empty and deleted again at once.
CHURN = """
import os, sys
spool, count = sys.argv[1], int(sys.argv[2])
for index in range(count):
    path = f"{spool}/churn-{os.getpid()}-{index}.profraw"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # pgod took it first
"""
