"""Choosing a parallel strategy per block: the strategy library, the integer program and the
mesh search. `ilp` is the integer-program core; it sees only numbers (times, bytes,
resharding costs), never the IR or the strategies that produced them.
"""
