"""Reusable UI pieces: pure functions of State vars, no logic."""
