"""Placing embedding tables on ranks: torchrec's placement vocabulary and its planner with the
settings and failure messages every project shares."""
