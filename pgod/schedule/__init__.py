"""When a due build runs: the profile's maturity (maturity.py), the machine's power and idleness
(conditions.py), and the order among due packages (order.py)."""
