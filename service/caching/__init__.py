"""Caching: generation counters and their Lua, and the read-through cache of answers
that do not depend on the viewer.
"""
